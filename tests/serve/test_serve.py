"""Serving from an archive: rebuilt PEFT adapters load with PeftModel.from_pretrained, and the served model's
outputs equal theirs (one adapter at a time, and per row in a mixed batch), on a tiny BERT and on real MiniLM."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from serve._builders import bert_adapters, peft_model, tiny_bert
from weightspace.compress import compress, reconstruct
from weightspace.decompose import PCAUnit
from weightspace.errors import ParameterError, ShapeMismatchError, TensorKeyError, UnsupportedFormatError
from weightspace.serve import AdapterBank, BankedLinear, BankedLoraLinear, serve

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("served")
    paths = bert_adapters(root / "adapters", 5, hidden=32, layers=2, head="pooler.dense")
    compress([str(p) for p in paths], root / "a.wsz", n_components=6, allow_larger=True)
    reconstruct(root / "a.wsz", root / "rebuilt")
    return root, paths


def test_served_outputs_equal_the_rebuilt_peft_adapters(archive: tuple[Path, list[Path]]) -> None:
    root, paths = archive
    base = tiny_bert()
    x = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(0))
    rebuilt = peft_model(base, [root / "rebuilt" / p.name for p in paths])  # loads with PeftModel.from_pretrained
    served = serve(copy.deepcopy(base), root / "a.wsz")
    assert sorted(type(m).__name__ for m in served.layers.values()) == ["BankedLinear"] + ["BankedLoraLinear"] * 4
    outputs = {}
    with torch.no_grad():
        for p in paths:
            rebuilt.set_adapter(p.name)
            served.set_adapter(p.name)
            want = rebuilt(input_ids=x).pooler_output
            got = served(input_ids=x).pooler_output
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            outputs[p.name] = got
        names = ["ad3", "ad0", "ad4"]
        with served.adapter_rows(names):
            mixed = served(input_ids=x).pooler_output
        for row, name in enumerate(names):
            torch.testing.assert_close(mixed[row], outputs[name][row], atol=1e-5, rtol=0)
        served.set_adapter(None)
        torch.testing.assert_close(served(input_ids=x).pooler_output, base(input_ids=x).pooler_output)
    plain = served.remove()
    assert not any(isinstance(m, (BankedLoraLinear, BankedLinear)) for m in plain.modules())


def test_rebuilt_adapters_keep_rank_and_the_served_bank_is_smaller(archive: tuple[Path, list[Path]]) -> None:
    root, paths = archive
    bank = AdapterBank.from_archive(root / "a.wsz")
    assert bank.names == [p.name for p in paths]
    lora = next(iter(bank.lora.values()))
    assert lora.cores.shape == (5, 6, 6)
    assert lora.u.shape == (32, 6)
    peft_bytes = sum(
        t.numel() * 4
        for name, t in peft_model(tiny_bert(), paths).named_parameters()
        if "lora_" in name  # every loaded adapter's A and B
    )
    served = serve(tiny_bert(), bank)
    lora_bytes = sum(
        t.numel() * t.element_size()
        for layer in served.layers.values()
        if isinstance(layer, BankedLoraLinear)
        for t in layer.buffers()
    )
    assert lora_bytes < peft_bytes


def test_serving_errors_name_the_problem(archive: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, paths = archive
    served = serve(tiny_bert(), root / "a.wsz", ["ad1", "ad2"])
    with pytest.raises(ParameterError, match=r"no adapter 'ad0' is served; adapters: 'ad1', 'ad2'"):
        served.set_adapter("ad0")
    served.set_adapter_rows(["ad1", "ad2"])
    with pytest.raises(ShapeMismatchError, match=r"the batch has 3 rows but 2 adapter ids were set"):
        served(input_ids=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ParameterError, match=r"adapter ids must be a 1-D tensor of bank indices in \[0, 2\)"):
        served.set_adapter_rows(torch.tensor([0, 2]))
    compress(
        [str(p) for p in paths], tmp_path / "pca.wsz", method=PCAUnit.method, n_components=2, allow_larger=True
    )
    with pytest.raises(UnsupportedFormatError, match=r"stored with method 'pca', not factored"):
        serve(tiny_bert(), tmp_path / "pca.wsz")
    odd = tiny_bert()
    odd.encoder.layer[0].attention.self.query = torch.nn.Identity()
    with pytest.raises(
        UnsupportedFormatError, match=r"module 'encoder\.layer\.0\.attention\.self\.query' is a Identity"
    ):
        serve(odd, root / "a.wsz")
    with pytest.raises(TensorKeyError, match=r"'encoder\.layer\.0\.attention\.self\.query': cannot place this"):
        serve(torch.nn.Sequential(torch.nn.Linear(2, 2)), root / "a.wsz")


@pytest.mark.slow
def test_serves_on_the_real_minilm_base(tmp_path: Path) -> None:
    zoo_text = pytest.importorskip("weightspace.zoo._text")
    import transformers

    base = transformers.BertModel.from_pretrained(str(zoo_text.minilm_dir())).eval()
    paths = bert_adapters(tmp_path / "adapters", 3, hidden=384, layers=6, scale=0.02)
    compress([str(p) for p in paths], tmp_path / "a.wsz", n_components=6)
    reconstruct(tmp_path / "a.wsz", tmp_path / "rebuilt")
    served = serve(copy.deepcopy(base), tmp_path / "a.wsz")
    assert len(served.layers) == 12
    rebuilt = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "rebuilt" / "ad1")).eval()
    x = torch.randint(100, 2000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        served.set_adapter("ad1")
        torch.testing.assert_close(
            served(input_ids=x).last_hidden_state, rebuilt(input_ids=x).last_hidden_state, atol=1e-5, rtol=0
        )
