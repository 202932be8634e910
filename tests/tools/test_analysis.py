"""csap_zoo.tools.analysis: attention-map similarity between propagated and independent maps."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import csap_zoo
from csap_zoo.tools.analysis import (
    attention_similarity, format_similarity_table, generate_images, map_similarity, plot_similarity,
    save_similarity_json,
)
from csap_zoo.tools.independent_twin import independent_twin_head


pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_similarity.py"
SIZE = (64, 96)


def sharpen(model, factor=300.0):
    """Scale every q/k so that random-weight maps are far from uniform (random init gives near-uniform maps)."""
    with torch.no_grad():
        for block in model.decode_head.blocks:
            if block.attn.q is not None:
                block.attn.q.weight.mul_(factor)
                block.attn.k.weight.mul_(factor)
    return model


def test_identical_maps_give_cosine_one_and_kl_zero():
    maps = torch.softmax(torch.randn(2, 4, 10, 7) * 3, dim=-1)
    sims = map_similarity(maps, maps.clone())
    assert torch.allclose(sims["cosine"], torch.ones_like(sims["cosine"]))
    assert sims["kl"].abs().max() < 1e-12


def test_tiny_case_by_hand():
    ind = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    prop = torch.tensor([[[[0.75, 0.25], [0.5, 0.5]]]])
    sims = map_similarity(ind, prop, eps=0.0 + 1e-12)
    # row 0: cos = 0.5 / (sqrt(0.5) * sqrt(0.625)) = 0.894427; KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.143841
    # row 1: cos = 0.5 / (1 * sqrt(0.5)) = 0.707107;            KL = 1 * ln(1/0.5) = 0.693147 (0 ln 0 = 0)
    assert sims["cosine"][0, 0].tolist() == pytest.approx([0.894427, 0.707107], abs=1e-6)
    assert sims["kl"][0, 0].tolist() == pytest.approx([0.143841, 0.693147], abs=1e-6)
    # KL to uniform over 2 cells: ln 2 - H(row): row 0 -> 0, row 1 -> ln 2
    assert sims["kl_uniform"][0, 0].tolist() == pytest.approx([0.0, math.log(2)], abs=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        map_similarity(torch.ones(1, 1, 2, 3), torch.ones(1, 1, 3, 2))


def test_own_maps_of_independent_model_match_forward_with_attention():
    torch.manual_seed(0)
    model = sharpen(csap_zoo.create_model("csap_tiny", num_classes=5, attention="independent")).eval()
    image = generate_images(1, *SIZE, seed=3)[0]
    with torch.no_grad():
        _, maps = model.forward_with_attention(image)
    twin = independent_twin_head(model.decode_head)
    assert torch.equal(twin.blocks[0].attn.q.weight, model.decode_head.blocks[0].attn.q.weight)
    report = attention_similarity(model, images=[image])
    assert [s.method for s in report.stages] == ["own", "own"]
    # stage 0's own map is the one the model computes (its query grid is 8x12, no padding at 64x96)
    assert torch.allclose(report.example["independent"][0], maps[0][0], atol=1e-6)
    for s in report.stages:
        assert 0.0 <= s.cosine <= 1.0 + 1e-9 and s.kl >= 0.0 and math.isfinite(s.kl)
        assert s.kl_uniform > 0.05  # sharpened: far from uniform, so the test is not trivial


def test_uniform_maps_through_the_pipeline_give_cosine_one_kl_zero():
    """All-zero q/k weights: every map is uniform, so propagated == independent exactly."""
    model = csap_zoo.create_model("csap_tiny", num_classes=5, attention="independent").eval()
    with torch.no_grad():
        for block in model.decode_head.blocks:
            for layer in (block.attn.q, block.attn.k):
                layer.weight.zero_(), layer.bias.zero_()
    report = attention_similarity(model, num_images=1, image_size=SIZE)
    for s in report.stages:
        assert s.cosine == pytest.approx(1.0, abs=1e-9)
        assert s.kl == pytest.approx(0.0, abs=1e-9)


def test_propagate_model_gets_fitted_qk_and_sane_numbers(tmp_path):
    torch.manual_seed(0)
    model = sharpen(csap_zoo.create_model("csap_tiny", num_classes=5)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = attention_similarity(model, num_images=2, image_size=SIZE, fit_iterations=5)
    assert [s.method for s in report.stages] == ["fitted", "fitted"]
    assert report.num_fit_images == 2 and report.num_images == 2
    for s in report.stages:
        assert 0.0 <= s.fit_r2 <= 1.0
        assert 0.0 <= s.cosine <= 1.0 + 1e-9 and 0.0 <= s.kl < 10 and s.kl_uniform >= 0.0
        assert all(math.isfinite(v) for v in (s.cosine, s.cosine_std, s.kl, s.kl_std))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    table = format_similarity_table(report)
    assert table.count("| fitted |") == 2
    json_path = save_similarity_json(report, tmp_path / "sim.json")
    data = json.loads(json_path.read_text())
    assert data["stages"][0]["method"] == "fitted" and "example" not in data
    png = plot_similarity(report, tmp_path / "sim.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_mixed_modes_and_sizes_not_divisible_by_32():
    torch.manual_seed(0)
    model = sharpen(csap_zoo.create_model("csap_tiny", num_classes=5, attention=("independent", "propagate")))
    report = attention_similarity(model, images=[torch.randn(3, 70, 100)], fit_images=[torch.randn(1, 3, 64, 64)],
                                  fit_iterations=3)
    assert [s.method for s in report.stages] == ["own", "fitted"]
    assert report.image_sizes == [(70, 100)]
    # padded grid at stride 8 is 12x16; rows in the padding (beyond ceil(70/8)=9, ceil(100/8)=13) are NaN
    example = report.example["independent"][0][0].view(12, 16, -1)
    assert torch.isnan(example[9:]).all() and torch.isnan(example[:, 13:]).all()
    assert not torch.isnan(example[:9, :13]).any()


def test_errors():
    with pytest.raises(ValueError, match="CSAP head"):
        attention_similarity(csap_zoo.create_model("segnext_tiny"), num_images=1, image_size=SIZE)
    with pytest.raises(FileNotFoundError):
        attention_similarity(csap_zoo.create_model("csap_tiny"), images=["/nonexistent.png"])


def test_image_files_are_read_and_normalised(tmp_path):
    from PIL import Image

    Image.new("RGB", (50, 40), (200, 30, 90)).save(tmp_path / "a.png")
    model = csap_zoo.create_model("csap_tiny", num_classes=5, attention="independent")
    report = attention_similarity(model, images=[tmp_path / "a.png"], image_size=(64, 64))
    assert report.image_sizes == [(64, 64)]


def test_script_writes_table_json_and_png(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("attention_similarity_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--attention", "independent", "--num-images", "1", "--size", "64", "64",
                      "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| stage |" in out and out.count("| own |") == 2
    assert json.loads((tmp_path / "r.json").read_text())["model"] == "csap_tiny"
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_script_runs_on_the_bundled_demo_with_shapes_scenes(tmp_path, capsys):
    """The documented demo analysis: the trained csap_tiny.shapes checkpoint on generated shapes scenes."""
    spec = importlib.util.spec_from_file_location("attention_similarity_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    demo = Path(csap_zoo.__file__).parent / "assets" / "demo"
    rc = module.main(["--model", "csap_tiny.shapes", "--checkpoint", str(demo), "--scenes", "shapes",
                      "--num-images", "1", "--size", "64", "64", "--json", str(tmp_path / "r.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("| fitted |") == 2  # both shallow stages of the demo propagate
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["num_images"] == 1 and data["num_fit_images"] == 1
    assert all(0.0 <= stage["cosine"] <= 1.0 + 1e-6 for stage in data["stages"])


def test_refinement_reports_its_fit_kl():
    """With refinement each fitted stage reports KL(propagated || fitted) on the fit images."""
    torch.manual_seed(0)
    model = sharpen(csap_zoo.create_model("csap_tiny", num_classes=5), factor=30.0).eval()
    images = generate_images(2, *SIZE, seed=1)
    ls_only = attention_similarity(model, num_images=1, image_size=SIZE, fit_images=images, refine_steps=0)
    refined = attention_similarity(model, num_images=1, image_size=SIZE, fit_images=images, refine_steps=20)
    assert ls_only.stages[0].fit_kl is None
    for s in refined.stages:
        assert s.fit_kl is not None and 0.0 <= s.fit_kl < 5.0


def test_analysis_reads_stage_inputs_from_the_head(monkeypatch):
    """The analysis takes tokens, cells and propagated maps from CSAPHead.stage_attention_inputs (written once in
    the head), not from its own copy of the head's computation."""
    from csap_zoo.models.heads.csap import CSAPHead

    seen = []
    original = CSAPHead.stage_attention_inputs

    def spy(self, features):
        stages = original(self, features)
        seen.append(stages)
        return stages

    monkeypatch.setattr(CSAPHead, "stage_attention_inputs", spy)
    torch.manual_seed(0)
    model = sharpen(csap_zoo.create_model("csap_tiny", num_classes=5, attention="independent")).eval()
    image = generate_images(1, *SIZE, seed=3)[0]
    report = attention_similarity(model, images=[image])
    assert len(seen) == 1  # one evaluation image, nothing to fit
    stages = seen[0]
    # stage 0 (8x12, no padding at 64x96): the report's propagated map is the head's, row for row
    assert stages[0].grid == report.stages[0].grid == (8, 12)
    assert torch.equal(report.example["propagated"][0], stages[0].propagated[0].float())
