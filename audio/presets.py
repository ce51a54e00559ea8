"""Audio presets, registered with the core registry when ``mambaverse.audio`` is imported.

- ``sashimi_mamba_6m``: the Mamba paper's SC09 size (Gu & Dao 2023, section 4.4: SaShiMi's U-Net with Mamba
  blocks): width 64 -> 128 -> 256 through pooling (4, 4), 8 Mamba blocks per stage and side, 6.5M parameters.
- ``sashimi_mamba_tiny``: width 32, one block per stage and side, 0.3M parameters; trains and generates on CPU.
Both take ``n_conditions=10`` to become digit-conditional (``create_model(name, n_conditions=10)``).
"""
from mambaverse.registry import preset

from .models import SaShiMiMamba

preset("sashimi_mamba_6m", SaShiMiMamba, d_model=64, pool=(4, 4), expand=2, n_layers=8, d_state=16)
preset("sashimi_mamba_tiny", SaShiMiMamba, d_model=32, pool=(4, 4), expand=2, n_layers=1, d_state=16)
