"""Wire format and the shared experiment schema. Knows no ML: no models, no optimizers."""
