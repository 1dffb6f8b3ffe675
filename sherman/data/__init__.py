"""DELT (Data Efficacy for LM Training, arXiv 2506.21545): data scoring, selection and ordering.

scoring.py   Learnability-Quality Scoring (LQS), PDS, proxy-loss and random scorers (one float per document)
selection.py keep the top r fraction by score
ordering.py  shuffled, ascending, descending and Folding orders
corpus.py    a synthetic corpus with known latent quality, a target set and a cloze evaluation; JSONL I/O
cli.py       `sherman data score|select|order`
"""
