"""The core's named presets. Tiny ones serve tests and demos; larger ones follow the papers' sizes.

Image presets (vim_*, vmamba_*) belong to the vision domain, which registers them when imported;
``create_model("vim_tiny")`` finds them through the plugin entry point.
"""
from .backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone
from .registry import preset

preset("causal_tiny", CausalBackbone, d_model=64, n_layer=2, d_state=16)
preset("causal_mamba2_tiny", CausalBackbone, d_model=64, n_layer=2, mixer="mamba2", d_state=32, headdim=16)
preset("bimamba_tiny", BidirectionalBackbone, d_model=64, n_layer=2, variant="caduceus", combine="add")
preset("vim_v2_tiny", BidirectionalBackbone, d_model=64, n_layer=2, variant="vim_v2")
preset("caduceus_ps_tiny", RCPSBackbone, d_model=64, n_layer=2, variant="caduceus", combine="add")

# paper-sized
preset("mamba_130m", CausalBackbone, d_model=768, n_layer=24)
preset("caduceus_ps_131k", RCPSBackbone, d_model=256, n_layer=16)  # Caduceus-PS (d=256 split in halves)
preset("caduceus_ph_131k", BidirectionalBackbone, d_model=128, n_layer=8)
