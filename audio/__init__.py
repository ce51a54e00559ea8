"""mambaverse.audio: waveform data (any WAV folder, mu-law), a SaShiMi-style Mamba U-Net that generates raw audio
through recurrent steps, its Lightning task, SC09-style metrics and a synthetic spoken-digit set."""
from .errors import AudioDataError
from .data import WavDataModule, label_of, mu_law_decode, mu_law_encode, read_wav
from .heads import QuantizedHead, nll_bits_per_sample, sample_next
from .models import DownPool, SaShiMiMamba, UNetCache, UpPool
from . import presets as _presets  # noqa: F401  (registers sashimi_mamba_6m, sashimi_mamba_tiny)

__all__ = ["AudioDataError", "DownPool", "QuantizedHead", "SaShiMiMamba", "UNetCache", "UpPool", "WavDataModule",
           "label_of", "mu_law_decode", "mu_law_encode", "nll_bits_per_sample", "read_wav", "sample_next"]
