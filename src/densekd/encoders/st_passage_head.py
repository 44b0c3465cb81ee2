"""The passage head as a sentence-transformers module, for :meth:`DenseEncoder.export_sentence_transformers`.

An exported student with a passage head is a ``Router``: the ``document`` route is Transformer,
Pooling, [Dense], [Normalize] and then this module, which reads the Transformer's
``token_embeddings`` and ``attention_mask`` and replaces ``sentence_embedding`` with the head's output
(:class:`~densekd.encoders.passage_head.GatedResidualHead`, same weights), so ``encode_document``
gives densekd's passage vectors. Loading the folder needs densekd installed and
``SentenceTransformer(folder, trust_remote_code=True)``: sentence-transformers imports the class by its
path, ``densekd.encoders.st_passage_head.PassageHeadModule``, and asks for that flag for any class outside
its own package (the code is densekd's, from the local install; nothing is downloaded).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from densekd.encoders.passage_head import GatedResidualHead

try:  # sentence-transformers >= 5 keeps the module base here
    from sentence_transformers.base.modules.module import Module
except ImportError:  # pragma: no cover - depends on the installed version
    from sentence_transformers.models.Module import Module


class PassageHeadModule(Module):
    """sentence-transformers wrapper of :class:`GatedResidualHead` (features dict in, features dict out).

    Parameters
    ----------
    hidden_size, dim
        Token-state and output widths.
    normalize
        L2-normalise the output (as the densekd encoder's ``normalize``).
    """

    config_keys: list[str] = ["hidden_size", "dim", "normalize"]

    def __init__(self, hidden_size: int, dim: int, normalize: bool = True):
        super().__init__()
        self.hidden_size, self.dim, self.normalize = hidden_size, dim, normalize
        self.head = GatedResidualHead(hidden_size, dim)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``sentence_embedding[B, D]`` <- head(``token_embeddings[B, L, H]``, ``attention_mask``, itself)."""
        tokens: Tensor = features["token_embeddings"]
        features["sentence_embedding"] = self.head(tokens, features["attention_mask"],
                                                   features["sentence_embedding"], self.normalize)
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Config and safetensors weights into ``output_path``."""
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> PassageHeadModule:
        """Rebuild from the saved config and weights (safetensors only)."""
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        module = cls(**cls.load_config(model_name_or_path, **hub))
        path = cls.load_file_path(model_name_or_path, filename="model.safetensors", **hub)
        if path is None:  # never fall back to a pickled weights file
            raise FileNotFoundError(f"{model_name_or_path}/{subfolder}: model.safetensors is missing")
        cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module
