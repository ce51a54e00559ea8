"""mambaverse.audio: waveform data (any WAV folder, mu-law), a SaShiMi-style Mamba U-Net that generates raw audio
through recurrent steps, its Lightning task, SC09-style metrics and a synthetic spoken-digit set."""
from .errors import AudioDataError
from .data import WavDataModule, label_of, mu_law_decode, mu_law_encode, read_wav

__all__ = ["AudioDataError", "WavDataModule", "label_of", "mu_law_decode", "mu_law_encode", "read_wav"]
