"""Default hyperparameters of the Mamba mixers, defined once; backbones and domains import them from here."""

#: SSM state size N of Mamba-1 (S4D-real) scans (Gu & Dao 2023, Table 12).
D_STATE = 16
#: SSM state size N of the Mamba-2 (SSD) mixer when built on its own.
D_STATE_MAMBA2 = 64
#: Width of the depthwise causal conv in front of every scan.
D_CONV = 4
#: d_inner = expand * d_model.
EXPAND = 2
#: Positions per block of the chunked SSD algorithm (Mamba-2's kernel chunk; not a long-context split).
CHUNK_SIZE = 64
#: Channels per head of the Mamba-2 mixer.
HEADDIM = 32
