"""The core's named presets. Tiny ones serve tests and demos; larger ones follow the papers' sizes."""
from .backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone
from .patch_scan import VimBackbone, VMambaBackbone
from .registry import preset

preset("causal_tiny", CausalBackbone, d_model=64, n_layer=2, d_state=16)
preset("causal_mamba2_tiny", CausalBackbone, d_model=64, n_layer=2, mixer="mamba2", d_state=32, headdim=16)
preset("bimamba_tiny", BidirectionalBackbone, d_model=64, n_layer=2, variant="caduceus", strategy="add")
preset("vim_v2_tiny", BidirectionalBackbone, d_model=64, n_layer=2, variant="vim_v2")
preset("caduceus_ps_tiny", RCPSBackbone, d_model=64, n_layer=2, variant="caduceus", strategy="add")
preset("vim_tiny", VimBackbone, img_size=32, patch_size=4, in_chans=3, embed_dim=64, depth=2, num_classes=10)
preset("vmamba_tiny", VMambaBackbone, in_chans=3, patch_size=4, dims=(32, 64), depths=(1, 1), num_classes=10)

# paper-sized
preset("mamba_130m", CausalBackbone, d_model=768, n_layer=24)
preset("caduceus_ps_131k", RCPSBackbone, d_model=256, n_layer=16)  # Caduceus-PS (d=256 split in halves)
preset("caduceus_ph_131k", BidirectionalBackbone, d_model=128, n_layer=8)
preset("vim_t", VimBackbone, img_size=224, patch_size=16, embed_dim=192, depth=24)
preset("vim_s", VimBackbone, img_size=224, patch_size=16, embed_dim=384, depth=24)
preset("vmamba_t", VMambaBackbone, dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), mlp_ratio=4.0, ssm_ratio=1.0)
