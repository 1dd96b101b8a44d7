"""Ids of the special symbols, fixed for every SentencePiece model attn trains.

Sequences on the wire: source = pieces + [EOS]; decoder input = [BOS] + pieces;
decoder target = pieces + [EOS]; batches are right-padded with PAD.
"""

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
