"""Tiny stand-ins for the seed's two remote-code models, Qwen-VL and mPLUG-Owl2, and their plugins.

Each stand-in is a model directory as the real checkpoint's: a ``config.json`` whose ``auto_map``
names the classes in the directory's own code (``tests/fixtures/seed-models/<model>/``, written to
the real code's module names and forward signatures), random weights saved with
``save_pretrained``, and the family's tokenizer (and image processor) files. It loads only with
``trust_remote_code``. The plugins (``plugins/``) are installed as ``pip install`` would install them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs it there
    import tomli as tomllib

from editors.tiny import build_tokenizer

ROOT = Path(__file__).parent.parent
CODE = Path(__file__).parent / "fixtures" / "seed-models"
PLUGINS = {"qwen-vl": ROOT / "plugins" / "kebench-qwen-vl", "mplug-owl2": ROOT / "plugins" / "kebench-mplug-owl2"}
VOCABULARY = 600
IMAGE_SIZE, PATCH_SIZE = 32, 8


def install_plugins(site: Path) -> Path:
    """Both plugin packages in ``site`` as ``pip install --target site plugins/...`` leaves them: each
    package and a ``dist-info`` with the ``METADATA`` and ``entry_points.txt`` of its ``pyproject.toml``
    (written here: pip builds a wheel first, which takes tens of seconds on the test machines)."""
    for plugin in PLUGINS.values():
        metadata = tomllib.loads((plugin / "pyproject.toml").read_text())
        project = metadata["project"]
        for package in metadata["tool"]["setuptools"]["packages"]:
            shutil.copytree(plugin / package, site / package)
        info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
        entry_points = "".join(f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
                               for group, entries in project["entry-points"].items())
        (info / "entry_points.txt").write_text(entry_points)
    return site


def _write_model(code: Path, out: Path, config: dict, classes: dict[str, str], seed: int) -> None:
    """Save a model of ``config`` built by the remote code in ``code`` (its weights at ``seed``) in ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for source in code.glob("*.py"):
        shutil.copy(source, out / source.name)
    (out / "config.json").write_text(json.dumps({**config, "auto_map": classes}, indent=1))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out, trust_remote_code=True),
                                             trust_remote_code=True)
    model.save_pretrained(out)


def build_qwen_vl(texts: list[str], out: Path, seed: int = 0) -> Path:
    """A tiny Qwen-VL: ``model_type`` ``qwen`` with a ``visual`` config, 4 blocks of width 64, 256 image queries."""
    tokenizer = build_tokenizer(texts, [], VOCABULARY, None)
    tokenizer.backend_tokenizer.post_processor = None  # Qwen adds no BOS
    # Qwen-VL's image tags follow its text vocabulary, above the 256 byte values a path is written in
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<img>", "</img>", "<imgpad>"]})
    tokenizer.save_pretrained(out)
    config = {"model_type": "qwen", "architectures": ["QWenLMHeadModel"], "vocab_size": len(tokenizer),
              "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 256,
              "max_position_embeddings": 2048,
              "visual": {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "width": 32, "layers": 2, "heads": 2,
                         "mlp_ratio": 2.0, "output_dim": 64,
                         "image_start_id": tokenizer.convert_tokens_to_ids("<img>")}}
    _write_model(CODE / "qwen-vl", out, config, {"AutoConfig": "configuration_qwen.QWenConfig",
                                                 "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}, seed)
    return out


def build_mplug_owl2(texts: list[str], out: Path, seed: int = 0) -> Path:
    """A tiny mPLUG-Owl2: a Llama of 4 modality-adaptive layers of width 64, 8 abstractor queries + end of image."""
    from transformers import CLIPImageProcessor

    tokenizer = build_tokenizer(texts, [], VOCABULARY, None)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE).save_pretrained(out)
    config = {"model_type": "mplug_owl2", "architectures": ["MPLUGOwl2LlamaForCausalLM"],
              "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 2048,
              "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id,
              "visual_config": {
                  "visual_model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                   "intermediate_size": 64, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
                  "visual_abstractor": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "intermediate_size": 64, "num_learnable_queries": 8}}}
    _write_model(CODE / "mplug-owl2", out, config,
                 {"AutoConfig": "configuration_mplug_owl2.MPLUGOwl2Config",
                  "AutoModelForCausalLM": "modeling_mplug_owl2.MPLUGOwl2LlamaForCausalLM"}, seed)
    return out


STAND_INS = {"qwen-vl": build_qwen_vl, "mplug-owl2": build_mplug_owl2}
