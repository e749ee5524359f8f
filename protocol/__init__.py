"""The contracts every process shares, and nothing else: the wire (wire/), the experiment config
(config/) and the files a run leaves (runfolder/). Knows no ML: no models, no optimizers."""
