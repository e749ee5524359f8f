"""Fashion-MNIST through the runtime: a <100k-parameter CNN under APAM, EF21-SGDM Top-K 1%, a straggler (async
against sync) and a 1-5M-parameter CNN where communication matters (issue 12, items 4 and 5)."""
