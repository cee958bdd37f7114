"""Every recipe runs (tiny override, one batch); a wrong field fails at once naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_data import write_fake_caption_eval, write_fake_dataset
from fake_vqa import write_fake_vqa
from safetensors.torch import load_file

from lightning_blip.cli import main
from lightning_blip.cli_lightning import BlipCLI

REPO = Path(__file__).resolve().parents[2]
COMMAND_RECIPES = {"capfilt.yaml"}  # recipes of commands other than fit, each tested below
RECIPES = sorted(r for r in (REPO / "recipes").glob("*.yaml") if r.name not in COMMAND_RECIPES)
TINY = str(REPO / "tests" / "tiny.yaml")
TINY_BLIP2 = str(REPO / "tests" / "tiny_blip2.yaml")
TINY_FINETUNE = str(REPO / "tests" / "tiny_finetune.yaml")
LOSSES = {
    "blip_": {"train/loss_itc", "train/loss_itm", "train/loss_lm"},
    "quickstart": {"train/loss_itc", "train/loss_itm", "train/loss_lm"},
    "blip2_stage1": {"train/loss_itc", "train/loss_itm", "train/loss_itg"},
    "blip2_stage2": {"train/loss"},
    "retrieval_": {"train/loss_itc", "train/loss_itm", "val/r_mean"},  # validation: ITM re-ranking
    "blip2_retrieval": {"train/loss_itc", "train/loss_itm", "train/loss_itg", "val/r_mean"},
    "vqa_": {"train/loss_vqa"},
    "blip2_miniature_stage1": {"train/loss_itc", "train/loss_itm", "train/loss_itg"},
    "blip2_miniature_stage2": {"train/loss"},
    "caption_": {"train/loss", "val/cider", "val/bleu4", "val/rouge_l"},  # validation: beam search
    "blip2_caption": {"train/loss", "val/cider", "val/bleu4", "val/rouge_l"},
    "easy_vqa_caption": {"train/loss", "val/cider"},
    "easy_vqa_vqa": {"train/loss_vqa", "val/vqa_acc"},
    "easy_vqa_retrieval": {"train/loss_itc", "train/loss_itm", "val/r_mean"},
}


def _override(recipe: Path) -> str:
    if recipe.name.startswith(("vqa_", "caption_", "easy_vqa_caption", "easy_vqa_vqa")):  # no ITC queue
        return TINY_FINETUNE
    return TINY_BLIP2 if recipe.name.startswith("blip2_") else TINY


@pytest.fixture(scope="module")
def tiny_llms(tmp_path_factory) -> dict[str, Path]:
    """A tiny random OPT and T5 with their tokenizers, standing in for OPT-2.7B and FlanT5-XL."""
    from lightning_blip.models.blip2.small_llm import save_tiny_llm

    root = tmp_path_factory.mktemp("llms")
    return {kind: save_tiny_llm(kind, root / kind) for kind in ("opt", "t5")}


def _model_args(recipe: Path, tiny_llms: dict[str, Path]) -> list[str]:
    if recipe.name.startswith("blip2_stage1"):  # the recipe's bert-base-uncased fits no tiny Q-Former
        return ["--model.init_args.init_weights=null"]
    if not recipe.name.startswith(("blip2_stage2", "blip2_miniature_stage2", "blip2_caption")):
        return []
    kind = "t5" if "flant5" in recipe.name else "opt"
    return [f"--model.init_args.config.llm={tiny_llms[kind]}"]


def _data_args(recipe: Path, tmp_path: Path) -> list[str]:
    if recipe.name.startswith("vqa_"):  # VQAv2-layout questions (+ validation with ranking)
        vqa = write_fake_vqa(tmp_path / "vqa", corrupt=1)
        return [
            f"--data.init_args.train_questions=[{vqa['questions']}]",
            f"--data.init_args.train_annotations=[{vqa['annotations']}]",
            f"--data.init_args.val_questions=[{vqa['flat']}]",
            f"--data.init_args.answer_list={vqa['answer_list']}",
            f"--data.init_args.image_root={vqa['image_root']}",
        ]
    if recipe.name.startswith(("quickstart", "blip2_miniature", "easy_vqa_vqa")):  # real easy-VQA data
        return [f"--data.init_args.output_dir={tmp_path / 'easy_vqa'}"]
    annotations = write_fake_dataset(tmp_path / "images", corrupt=1)
    # retrieval recipes also validate (one caption per image here), through the ITM re-ranking
    validation = [f"--data.init_args.val_annotations=[{annotations}]"] if "retrieval" in recipe.name else []
    if "caption" in recipe.name:  # captioning validates on Karpathy-style references (one unreadable image)
        validation = [f"--data.init_args.val_annotations=[{write_fake_caption_eval(annotations, corrupt=1)}]"]
    return [
        f"--data.init_args.train_annotations=[{annotations}]",
        f"--data.init_args.image_root={annotations.parent}",
        *validation,
    ]


def test_recipes_are_found():
    expected = {"blip_pretrain.yaml", "blip_pretrain_vitl.yaml", "quickstart.yaml"}
    expected |= {
        "blip2_stage1.yaml",
        "blip2_stage1_vitl.yaml",
        "blip2_stage2_opt.yaml",
        "blip2_stage2_flant5.yaml",
    }
    expected |= {"vqa_v2.yaml"}
    expected |= {"caption_coco.yaml", "blip2_caption_coco.yaml"}
    expected |= {"retrieval_coco.yaml", "retrieval_flickr.yaml", "blip2_retrieval_coco.yaml"}
    assert expected <= {r.name for r in RECIPES}


def test_recipe_vision_models_exist_and_openai_clip_has_quickgelu():
    """The runs above swap in a tiny ViT: check the recipes' own timm names here (built on "meta")."""
    import timm
    import torch
    import yaml

    names = {}
    for recipe in RECIPES:
        config = yaml.safe_load(recipe.read_text()).get("model", {}).get("init_args", {}).get("config")
        vision = (config or {}).get("vision") or {}
        if isinstance(vision, dict) and "model_name" in vision:
            names[recipe.name] = vision["model_name"]
    assert names and all(timm.is_model(name) for name in names.values()), names
    with torch.device("meta"):
        clip = timm.create_model(names["blip2_stage1_vitl.yaml"])
    assert type(clip.blocks[0].mlp.act).__name__ == "QuickGELU"  # OpenAI CLIP ViT-L/14, as LAVIS


def test_stage2_recipes_compute_what_lavis_computes():
    """BOS scored after the empty prompt, OPT stopped at the newline alone, FlanT5 with exact GELU."""
    import yaml

    from lightning_blip.models.blip2 import Blip2LLMConfig

    built = {}
    for recipe in RECIPES:
        if recipe.name.startswith("blip2_stage2"):
            values = yaml.safe_load(recipe.read_text())["model"]["init_args"]["config"]
            built[recipe.stem] = Blip2LLMConfig(
                **{k: v for k, v in values.items() if k not in ("vision", "qformer")}
            )
    assert set(built) == {"blip2_stage2_opt", "blip2_stage2_flant5"}
    assert all(c.prompt == "" and c.score_bos and not c.stop_at_eos for c in built.values())
    assert built["blip2_stage2_flant5"].llm_dense_act_fn == "gelu"
    assert built["blip2_stage2_opt"].llm_dense_act_fn is None  # OPT's config has no dense_act_fn


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_one_step(recipe: Path, tmp_path: Path, tiny_llms: dict[str, Path]):
    args = [
        "-c",
        str(recipe),
        "-c",
        _override(recipe),
        "--trainer.fast_dev_run=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = BlipCLI(args=args + _model_args(recipe, tiny_llms) + _data_args(recipe, tmp_path), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    expected = next(v for k, v in LOSSES.items() if recipe.name.startswith(k))
    assert expected <= set(cli.trainer.callback_metrics)


def test_capfilt_recipe_runs(tmp_path: Path):
    """`lightning_blip capfilt -c recipes/capfilt.yaml` with tiny models and inputs writes shards and stats."""
    from capfilt.capfilt_data import recipe_args, save_tiny_blip, write_inputs

    inputs = write_inputs(tmp_path / "inputs")
    captioner, filter_ = save_tiny_blip(tmp_path / "captioner", 1), save_tiny_blip(tmp_path / "filter", 2)
    out = tmp_path / "out"
    main(
        [
            "capfilt",
            "-c",
            str(REPO / "recipes" / "capfilt.yaml"),
            *recipe_args(inputs, captioner, filter_, out),
        ]
    )
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["sources"]) == {"web", "human"} and stats["total"]["images_in"] == 15
    assert all((out / shard).is_file() for shard in stats["shards"])


def test_console_entry_point_runs_fit(tmp_path: Path):
    recipe = REPO / "recipes" / "blip_pretrain.yaml"
    main(["fit", "-c", str(recipe), "-c", TINY, "--trainer.fast_dev_run=1", *_data_args(recipe, tmp_path)])


@pytest.mark.parametrize(
    "bad", ["--model.init_args.config.vision.modle_name=vit_base_patch16_224", "--data.init_args.batchsize=3"]
)
def test_a_wrong_field_fails_at_once_naming_it(bad: str, capsys):
    recipe = str(REPO / "recipes" / "blip_pretrain.yaml")
    with pytest.raises(SystemExit):
        BlipCLI(args=["-c", recipe, bad], run=False)
    assert bad.split("=")[0].split(".")[-1] in capsys.readouterr().err


def test_validate_test_and_predict_subcommands(tmp_path: Path):
    recipe = REPO / "recipes" / "blip_pretrain.yaml"
    annotations = write_fake_dataset(tmp_path / "images")
    common = [
        "-c",
        str(recipe),
        "-c",
        TINY,
        f"--data.init_args.image_root={annotations.parent}",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    for command, field in (("validate", "val"), ("test", "test"), ("predict", "test")):
        cli = BlipCLI(
            args=[command, *common, f"--data.init_args.{field}_annotations=[{annotations}]"], run=True
        )
        if command == "predict":
            batches = cli.trainer.predict_loop.predictions
            assert sum(len(b["index"]) for b in batches) == 16
            assert batches[0]["image_embeds"].shape == (4, 32)
        else:
            assert 0.0 <= cli.trainer.callback_metrics[f"{field}/i2t_r1"] <= 1.0


@pytest.mark.parametrize("name", ["caption_coco", "vqa_v2", "retrieval_coco"])
def test_predict_writes_one_json_line_per_id(name: str, tmp_path: Path):
    """`lightning_blip predict -c recipes/<task>.yaml` writes captions / answers / embeddings."""
    recipe = REPO / "recipes" / f"{name}.yaml"
    data = _data_args(recipe, tmp_path)
    if name == "vqa_v2":  # the test split: the flat question file (one line of it is not JSON)
        flat = next(a for a in data if a.startswith("--data.init_args.val_questions"))
        data.append(flat.replace("val_questions", "test_questions"))
    else:  # Karpathy-style test references, with one unreadable image
        annotations = Path(data[0].split("=[")[1].rstrip("]"))
        data.append(f"--data.init_args.test_annotations=[{write_fake_caption_eval(annotations, corrupt=1)}]")
    main(
        [
            "predict",
            "-c",
            str(recipe),
            "-c",
            _override(recipe),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            *data,
        ]
    )
    out = tmp_path / "predictions"  # the run's folder: default_root_dir without a logger
    if name == "retrieval_coco":
        images = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
        texts = [json.loads(line) for line in (out / "texts.jsonl").read_text().splitlines()]
        assert len(images) == len({r["index"] for r in images}) == 16  # the unreadable image left out
        assert len(texts) == 32 and len({r["text_index"] for r in texts}) == 32  # two captions per image
        embeds = load_file(str(out / "images.safetensors"))
        assert embeds["image_embeds"].shape == (16, 32) and embeds["ids"].tolist() == [
            r["index"] for r in images
        ]
        return
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    key, field = ("question_id", "answer") if name == "vqa_v2" else ("image_id", "caption")
    ids = [r[key] for r in rows]
    assert len(ids) == len(set(ids)) > 0 and all(isinstance(r[field], str) for r in rows)
    assert len(ids) == (12 if name == "vqa_v2" else 16)
