"""Sparse decoding backends of the one attention call site (`sherman.core.attention.BACKENDS`).

dense.py   the fast dense decode path (grouped heads folded into the query dim) and references
sparse.py  block summaries, Quest/ReSA block scores, block-sparse decode; backend "quest"
resa.py    ReSA (arXiv 2506.04108): group block-sparse decode + dense rectification; backend "resa"
fused.py   fused C++ block-sparse decode kernel (online softmax; options["impl"] = "cpp")
seer.py    SeerAttention-R (arXiv 2506.08889): learned block gate, self-distillation; backend "seer"
cli.py     `sherman seer train CKPT`
"""
