"""mambaverse.genomics: FASTA datamodules, a DNA tokenizer, RC-aware heads, DNA tasks and presets."""
from .errors import GenomicsDataError
from .tokenizer import DNATokenizer, rc_tokens
from .fasta import FastaSource, prepare_fasta
from .data import FastaDataModule
from .models import LMHead, RCPatchStem, RCTokenEmbedding, SequenceHead, TokenEmbedding

__all__ = ["GenomicsDataError", "DNATokenizer", "rc_tokens", "FastaSource", "prepare_fasta", "FastaDataModule",
           "LMHead", "RCPatchStem", "RCTokenEmbedding", "SequenceHead", "TokenEmbedding"]
from .tasks import DNAClassifier, DNALanguageModel, load_pretrained_weights
from .writer import EmbeddingWriter

__all__ += ["DNAClassifier", "DNALanguageModel", "load_pretrained_weights", "EmbeddingWriter"]
