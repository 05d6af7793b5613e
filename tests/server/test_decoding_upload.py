"""Decoding files through the API: uploaded with an adapter version (multipart `lm`, `lexicon`, beam settings),
loaded beside it by the cache, seeded with the demo adapters, and a request's `decoder`, `include[]` and `prompt`
reaching the decoder as a `DecodeRequest`."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from chorus_server.decoding.options import BeamSettings, DecodeRequest
from chorus_server.engine import Engine, load_adapter
from chorus_server.live.protocol import SessionConfig
from chorus_server.runtime import ModelSource, adapter_cache, seed_store
from chorus_server.service import Transcriber
from chorus_server.validation import BackboneValidator
from chorus_store import LocalStore
from chorus_store.decoding_files import KENLM_MAGIC
from tests.server.conftest import make_settings, running_app, transcribe, wav

# Words both the model's own head and its eng-0 adapter spell (their vocabularies share n, x, à, ÿ and ').
WORDS = ["nx", "xàn", "ÿn"]
LEXICON = ("\n".join(WORDS) + "\n").encode()
ARPA = (
    "\\data\\\nngram 1=5\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-1.0\t</s>\n-0.8\tnx\t-0.2\n-0.9\txàn\t-0.2\n"
    "-0.9\tÿn\t-0.2\n\n\\2-grams:\n-0.3\t<s> nx\n-0.4\tnx xàn\n\n\\end\\\n"
).encode()


def upload(client, name: str, adapter: bytes, params: str = "", **parts):
    files = {"file": ("a.safetensors", adapter)}
    files.update({k: v for k, v in parts.items() if isinstance(v, tuple)})
    data = {k: v for k, v in parts.items() if not isinstance(v, tuple)}
    return client.put(f"/v1/adapters/{name}{params}", files=files, data=data)


@pytest.fixture
def eng(adapter_files):
    return next(p for p in adapter_files if p.name.startswith("eng")).read_bytes()


def test_upload_with_lm_lexicon_and_beam_settings(client, eng):
    response = upload(
        client, "with-lm", eng, lm=("x.arpa", ARPA), lexicon=("l.txt", LEXICON), beam_width="8", lm_weight="0.8"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["lm"]["format"] == "arpa" and body["lm"]["size"] == len(ARPA) and body["lm"]["order"] == 2
    assert body["lexicon"]["words"] == 3 and body["beam"] == {"beam_width": 8, "lm_weight": 0.8}
    assert client.get("/v1/adapters/with-lm").json()["lm"] == body["lm"]


@pytest.mark.parametrize(
    ("parts", "status", "param", "message"),
    [
        ({"lexicon": ("l.txt", b"dog\n")}, 422, None, "'dog' uses 'd', 'g', 'o', outside the adapter's vocabulary"),
        ({"lexicon": ("l.txt", b"\xff\xfe\n")}, 422, None, "line 1 is not UTF-8"),
        ({"lm": ("x.arpa", ARPA[:60])}, 422, None, "ends before its"),
        ({"lm": ("x.arpa", bytes(range(256)))}, 422, None, "expected the \\data\\ header"),
        ({"lm": ("x.arpa", b"x" * 5000)}, 413, "lm", "lm file exceeds the limit of 4096 bytes"),
        ({"lm": ("x.bin", KENLM_MAGIC + b"5\n\0" + bytes(range(256)) * 4)}, 422, None, "KenLM binary does not load"),
        ({"lm": ("x.arpa", ARPA), "beam_width": "wide"}, 400, "beam_width", "beam_width must be an integer"),
        ({"lm": ("x.arpa", ARPA), "beam_width": "0"}, 400, "beam_width", "between 1 and 512"),
        ({"lm": ("x.arpa", ARPA), "lm_weight": "nan"}, 400, "lm_weight", "between 0 and 10"),
        ({"beam_width": "8"}, 400, None, "beam settings apply only to a version with a language model or lexicon"),
        ({"lm": "not a file"}, 400, "lm", "lm must be a file"),
    ],
)
def test_bad_decoding_uploads_are_refused_and_nothing_is_stored(
    tmp_path, model_dir, eng, parts, status, param, message
):
    settings = make_settings(tmp_path, model_dir, limits={"max_lm_bytes": 4096})
    with running_app(settings) as client:
        response = upload(client, "refused", eng, **parts)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert message in error["message"] and error["param"] == param
        assert client.get("/v1/adapters/refused").status_code == 404
    assert not list((tmp_path / "store" / "adapters").rglob("*.lm"))


def test_a_kenlm_binary_is_stored_and_decodes_and_one_that_crashes_kenlm_is_refused(client, eng, tmp_path):
    """The binary of ARPA above (tests/server/decoding/data): stored as `kenlm` and loaded for beam search. The
    same file with one byte changed crashes KenLM on loading: refused at upload (422), so no request can make
    the server load it, and the server goes on serving."""
    binary = (Path(__file__).parent / "decoding" / "data" / "words.kenlm").read_bytes()
    stored = upload(client, "binary-lm", eng, lm=("words.bin", binary), lexicon=("l.txt", LEXICON))
    assert stored.status_code == 201, stored.text
    assert stored.json()["lm"]["format"] == "kenlm"
    answer = transcribe(client, wav(1.0), "binary-lm", decoder="beam")
    assert answer.status_code == 200, answer.text
    damaged = bytearray(binary)
    damaged[146] = 0xFF
    refused = upload(client, "crashing-lm", eng, lm=("words.bin", bytes(damaged)), lexicon=("l.txt", LEXICON))
    assert refused.status_code == 422, refused.text
    assert "crashed KenLM while loading" in refused.json()["error"]["message"]
    assert client.get("/v1/adapters/crashing-lm").status_code == 404
    assert transcribe(client, wav(1.0), "binary-lm", decoder="beam").json()["text"] == answer.json()["text"]


def test_client_file_names_are_never_used_as_paths(client, eng, tmp_path):
    response = upload(client, "named", eng, lm=("../../../../evil.lm", ARPA), lexicon=("/etc/passwd", LEXICON))
    assert response.status_code == 201, response.text
    store = tmp_path / "store"
    assert sorted(p.name for p in (store / "adapters").glob("*/named/v000001.*")) == [
        "v000001.json",
        "v000001.lexicon",
        "v000001.lm",
        "v000001.safetensors",
    ]
    assert not list(tmp_path.rglob("evil*")) and not list(tmp_path.rglob("passwd"))


@pytest.fixture
def decoded(monkeypatch) -> list[tuple[object, DecodeRequest | None]]:
    """(adapter, request) of every `_decode` call: what reaches the decoder."""
    calls: list[tuple[object, DecodeRequest | None]] = []
    original = Transcriber._decode

    def spy(self, pieces, plans, adapter, request=None):
        calls.append((adapter, request))
        return original(self, pieces, plans, adapter, request)

    monkeypatch.setattr(Transcriber, "_decode", spy)
    return calls


def test_request_choices_reach_the_decoder_with_the_versions_files(client, eng, decoded):
    assert (
        upload(client, "with-lm", eng, lm=("x.arpa", ARPA), lexicon=("l.txt", LEXICON), beam_width="8").status_code
        == 201
    )
    prompt = "NX, xàn! dog nx ÿn-x 'ÿn'"
    fields = {"decoder": "beam", "prompt": prompt, "include[]": "logprobs"}
    response = transcribe(client, wav(1.0), "with-lm", **fields)
    assert response.status_code == 200, response.text
    adapter, request = decoded[-1]
    # Punctuation the vocabulary spells (') is kept; words it cannot spell (dog, ÿn-x) are left out.
    assert request == DecodeRequest("beam", ("nx", "xàn", "'ÿn'"), True)
    files = adapter.language_model
    assert files.lm.read_bytes() == ARPA and files.lexicon.read_bytes() == LEXICON
    assert files.settings == BeamSettings(beam_width=8)
    assert transcribe(client, wav(1.0), "eng-0").status_code == 200
    adapter, request = decoded[-1]
    assert adapter.language_model is None and request == DecodeRequest()


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"decoder": "viterbi"}, "decoder", "decoder must be 'greedy' or 'beam'"),
        ({"decoder": "beam"}, "decoder", "has no language model or lexicon, so decoder=beam cannot run"),
        ({"include[]": "logprobs", "response_format": "text"}, "include[]", "only with response_format json"),
        ({"include[]": "logprobs", "response_format": "verbose_json"}, "include[]", "only with response_format json"),
        ({"include[]": "everything"}, "include[]", "supports only 'logprobs'"),
        ({"decoder": "beam", "stream": "true"}, "decoder", "send decoder without stream"),
        ({"include[]": "logprobs", "stream": "true"}, "include[]", "send include[] without stream"),
    ],
)
def test_bad_decoding_requests_are_400s_naming_the_field(client, fields, param, message):
    response = transcribe(client, wav(1.0), "eng-0", **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param


def test_prompt_hotwords_are_bounded(tmp_path, model_dir, adapter_files, decoded):
    settings = make_settings(tmp_path, model_dir, limits={"max_hotwords": 2})
    with running_app(settings, adapter_files) as client:
        long_prompt = " ".join(["nx", "xàn", "ÿn", "x" * 65, *["n"] * 10_000])
        assert transcribe(client, wav(1.0), "eng-0", prompt=long_prompt).status_code == 200
    assert decoded[-1][1].hotwords == ("nx", "xàn")


def test_a_realtime_sessions_prompt_becomes_hotwords():
    assert SessionConfig(prompt="Nx, xàn").decode_request() == DecodeRequest(None, ("Nx,", "xàn"), False)
    assert SessionConfig().decode_request() == DecodeRequest()


def test_the_cache_loads_the_files_beside_the_adapter(tmp_path, model_dir, adapter_files):
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    validator = BackboneValidator.for_engine(engine)
    store = LocalStore(tmp_path / "store", validator)
    eng = next(p for p in adapter_files if p.name.startswith("eng"))
    from chorus_store.decoding_files import DecodingUpload

    with_lm = store.publish("t/with", eng, decoding=DecodingUpload(lm=tmp_path / "lm.arpa", beam={"lm_weight": 2.0}))
    plain = store.publish("t/plain", eng)
    cache = adapter_cache(store, validator, engine, 1 << 30, 1 << 30)
    with cache.acquire(with_lm.ref) as adapter:
        assert adapter.language_model.lm.read_bytes() == ARPA and adapter.language_model.lexicon is None
        assert adapter.language_model.settings == BeamSettings(lm_weight=2.0)
        assert adapter.language_model.default_decoder == "beam"
    with cache.acquire(plain.ref) as adapter:
        assert adapter.language_model is None


@pytest.fixture(autouse=True)
def _lm_file(tmp_path):
    (tmp_path / "lm.arpa").write_bytes(ARPA)


def test_seeding_stores_the_demo_language_models(tmp_path, model_dir, adapter_files):
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    store = LocalStore(tmp_path / "seeded", BackboneValidator.for_engine(engine))
    lm_dir = tmp_path / "demo-lm"
    (lm_dir / "eng").mkdir(parents=True)
    (lm_dir / "eng" / "lm.arpa").write_bytes(ARPA)
    (lm_dir / "eng" / "lexicon.txt").write_bytes(LEXICON)
    head = load_adapter(next(p for p in adapter_files if p.name.startswith("eng")))
    source = ModelSource(model_dir, adapter_files, "default", head_language="eng", lm_dir=lm_dir)
    seed_store(store, head, source)
    for name in ("default", "eng-0"):  # the head (its language given by the source) and the eng adapter
        record = store.get(f"chorus/{name}")
        assert record.lm is not None and record.lexicon is not None, name
        assert store.decoding_file(record, "lm").read_bytes() == ARPA
    others = [p.stem for p in adapter_files if not p.name.startswith("eng")]
    assert others and all(store.get(f"chorus/{name}").lm is None for name in others)


def test_the_openai_sdk_sends_decoder_prompt_and_include(tmp_path, model_dir, adapter_files, eng, decoded):
    """`extra_body={"decoder": ...}`, `prompt` and `include=["logprobs"]` as the official SDK encodes them."""
    openai = pytest.importorskip("openai")
    from chorus_server.background import BackgroundServer

    with BackgroundServer(make_settings(tmp_path, model_dir)) as server:
        put = httpx.put(
            f"{server.url}/v1/adapters/with-lm",
            files={"file": ("a", eng), "lm": ("x", ARPA), "lexicon": ("l", LEXICON)},
        )
        assert put.status_code == 201, put.text
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        audio = tmp_path / "clip.wav"
        audio.write_bytes(wav(1.0))
        with audio.open("rb") as f:
            answer = client.audio.transcriptions.create(
                model="with-lm", file=f, prompt="Nx ÿn", include=["logprobs"], extra_body={"decoder": "beam"}
            )
        assert isinstance(answer.text, str)
        assert decoded[-1][1] == DecodeRequest("beam", ("nx", "ÿn"), True)
        with audio.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
            client.audio.transcriptions.create(model="with-lm", file=f, extra_body={"decoder": "viterbi"})
        assert bad.value.body["param"] == "decoder"  # type: ignore[index]
        with audio.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
            client.audio.transcriptions.create(model="with-lm", file=f, include=["logprobs"], response_format="text")
        assert bad.value.body["param"] == "include[]"  # type: ignore[index]


def test_a_refused_demo_language_model_does_not_take_the_adapter_away(tmp_path, model_dir, adapter_files, caplog):
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    store = LocalStore(tmp_path / "seeded", BackboneValidator.for_engine(engine))
    lm_dir = tmp_path / "demo-lm"
    (lm_dir / "eng").mkdir(parents=True)
    (lm_dir / "eng" / "lexicon.txt").write_bytes(b"Dog\n")  # not spelled in the adapter's vocabulary
    seed_store(store, None, ModelSource(model_dir, adapter_files, "default", lm_dir=lm_dir))
    record = store.get("chorus/eng-0")
    assert record.lexicon is None and record.visibility == "public"
    assert "demo language model for chorus/eng-0 was refused" in caplog.text


def test_pinning_a_version_builds_its_beam_search_decoder_before_its_first_request(client, eng, monkeypatch):
    from chorus_server.decoding import resources

    cache = resources.LoadedCache()
    monkeypatch.setattr(resources, "LOADED", cache)
    monkeypatch.setattr("chorus_server.decoding.beam.LOADED", cache)
    stored = upload(client, "pinned-lm", eng, lm=("x.arpa", ARPA), lexicon=("l.txt", LEXICON))
    assert stored.status_code == 201, stored.text
    assert client.post("/v1/adapters/pinned-lm/pin").status_code == 200
    deadline = time.monotonic() + 20
    while cache.builds == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cache.builds == 1  # built in the background, no request yet
    assert transcribe(client, wav(1.0), "pinned-lm", decoder="beam").status_code == 200
    assert cache.builds == 1  # the request used it
