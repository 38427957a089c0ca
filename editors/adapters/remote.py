"""What families whose model code lives in their own repository (``trust_remote_code``) share.

Qwen-VL and mPLUG-Owl2 are not in transformers: their checkpoints load through
``AutoModelForCausalLM`` with the repository's code, their forward is a causal LM's written for an
older transformers (tuple caches, positions counted from the row's first slot), and they have
tokenizers and image processors rather than one processor. Their adapters (plugins, see
``plugins/`` and ``docs/models.md``) assemble rows themselves, with every row padded on the right:

- no KV-prefix reuse (``supports_prefix_cache = False``): the legacy caches are not the engine's;
- :meth:`RemoteCodeAdapter.generate` decodes greedily by full forwards of right-padded rows, one
  new token per row and step, so a row's positions never depend on its neighbours' lengths (these
  models ignore left padding in their positions) and no generation API of the remote code is used.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import ProcessorMixin

from editors.adapters.base import Query
from editors.adapters.chat import ChatTemplateAdapter


class TokenizerProcessor(ProcessorMixin):
    """A processor that is only a tokenizer, for a model that reads its images itself (Qwen-VL reads
    them from the file paths written between its ``<img>`` tags)."""

    def __init__(self, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(tokenizer, **kwargs)


class ImageTextProcessor(ProcessorMixin):
    """A family's image processor and tokenizer, loaded from its checkpoint, as one processor."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)


class RemoteCodeAdapter(ChatTemplateAdapter):
    """A family whose checkpoint runs its repository's causal-LM code; subclasses build the rows
    (:meth:`process`, :meth:`reference_images`, :meth:`reference_row`) and name the modules."""

    supports_prefix_cache = False
    #: the token embeddings' name in :meth:`language_model`
    embeddings_name: ClassVar[str] = "embed_tokens"

    @classmethod
    def load_model(cls, source: str, dtype: torch.dtype, trust_remote_code: bool = False, **placement: Any) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code,
                                                    **placement)

    def input_embeddings(self) -> nn.Embedding:
        return self.language_model().get_submodule(self.embeddings_name)

    @torch.no_grad()
    def generate(self, queries: list[Query], max_new_tokens: int = 16) -> list[str]:
        if self.form.reference:
            rows, inputs = self._reference_rows(queries, with_answer=False)
        else:
            rows, _, inputs = self._prompts(queries)
        self._check_lengths(queries, [len(row) + max_new_tokens for row in rows])
        eos = self.tokenizer.eos_token_id
        new: list[list[int]] = [[] for _ in rows]
        for _ in range(max_new_tokens):
            running = [index for index, tokens in enumerate(new) if not tokens or tokens[-1] != eos]
            if not running:
                break
            step = {**inputs, **self._padded(rows, side="right")}
            step = {key: value.to(self.device) if torch.is_tensor(value) else value for key, value in step.items()}
            logits = self.model(**step, use_cache=False).logits
            for index in running:
                token = int(logits[index, len(rows[index]) - 1].argmax())
                rows[index] = [*rows[index], token]
                new[index].append(token)
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
