"""The console in a real browser: Debian's chromium driven by Playwright, with a fake microphone playing a WAV.

Skipped when Playwright or chromium is missing (`make browser-test` installs both; see docs/console.md).
Screenshots go to $CHORUS_CONSOLE_SCREENSHOTS (only `make screenshots` sets it, to docs/), else to a temporary
directory, so running the tests leaves the tracked screenshots alone.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import soxr

from chorus_server.background import BackgroundServer
from chorus_server.demo_model import DEMO_DIR
from chorus_server.live.results import Results
from chorus_server.settings import Settings

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(not (DEMO_DIR / "backbone" / "config.json").is_file(), reason="needs the bundled demo model"),
]

SAMPLE = "de-1.wav"
ADAPTER = "chorus/de"
DEFAULT_ADAPTER = "chorus/en"  # the demo model's own head: what `whisper-1` means on this server
ERROR_RED = "rgb(176, 0, 32)"  # #b00020
DEVICE_RATE = 44100  # Chromium's fake microphone runs at 44.1 kHz: a file at that rate is played unresampled


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[BackgroundServer]:
    data = tmp_path_factory.mktemp("console-server")
    settings = Settings(store=str(data / "store"), data_dir=data, device="cpu", dtype="float32", _env_file=None)
    with BackgroundServer(settings) as running:
        yield running


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """The sample at the microphone's rate, half a second of silence before it and a second after: one turn."""
    samples, rate = soundfile.read(DEMO_DIR / "samples" / SAMPLE, dtype="float32")
    played = soxr.resample(samples, rate, DEVICE_RATE)
    audio = np.concatenate([np.zeros(DEVICE_RATE // 2), played, np.zeros(DEVICE_RATE)])
    path = tmp_path_factory.mktemp("console-audio") / "speech.wav"
    soundfile.write(path, audio, DEVICE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def http_text(server, speech) -> str:
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": ("speech.wav", speech.read_bytes(), "audio/wav")},
        data={"model": ADAPTER},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    text = str(response.json()["text"])
    assert text
    return text


@pytest.fixture(scope="module")
def browser(speech) -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech}%noloop",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("CHORUS_CONSOLE_SCREENSHOTS")
    return Path(target) if target else tmp_path_factory.mktemp("screenshots")


def open_console(browser, server, width: int = 1100, height: int = 800):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(server.url + "/")
    page.wait_for_selector(f'#adapter option[value="{ADAPTER}"]', state="attached")
    page.select_option("#adapter", ADAPTER)
    return page


def transcribe_float(server: BackgroundServer, samples: np.ndarray) -> str:
    """The HTTP transcript of exactly these float32 samples (a FLOAT WAV carries them bit for bit)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": ("turn.wav", buffer.getvalue(), "audio/wav")},
        data={"model": ADAPTER},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def test_the_microphone_transcript_is_the_http_transcript_of_what_it_heard(
    browser, server, http_text, shots, monkeypatch
):
    heard: list[np.ndarray] = []
    finish = Results._finish

    async def keep_audio(self, job):  # the turn's audio as the server received it
        heard.append(np.concatenate(job.turn.audio))
        await finish(self, job)

    monkeypatch.setattr(Results, "_finish", keep_audio)
    page = open_console(browser, server)
    page.get_by_role("button", name="Start microphone").click()
    final = page.wait_for_selector("#live-transcript p.final", timeout=60_000)
    live = final.text_content() or ""
    assert page.get_attribute("#mic", "aria-pressed") == "true"
    page.screenshot(path=str(shots / "console-live.png"))
    page.close()
    assert len(heard) == 1
    assert live == transcribe_float(server, heard[0])
    # The microphone path resamples (44.1 -> 16 kHz from wherever capture began) and VAD trims the silences, so
    # the demo model (synthetic speech, fragile) may differ from the file's transcript by a letter or a space.
    assert character_error_rate(live, http_text) <= 0.1, (live, http_text)


def character_error_rate(got: str, want: str) -> float:
    row = list(range(len(want) + 1))
    for i, a in enumerate(got, 1):
        previous, row[0] = row[0], i
        for j, b in enumerate(want, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (a != b))
    return row[-1] / max(1, len(want))


def test_an_uploaded_file_is_transcribed_and_its_words_follow_playback(browser, server, speech, http_text, shots):
    page = open_console(browser, server)
    page.get_by_role("tab", name="File").click()
    page.set_input_files("#file-input", str(speech))
    page.get_by_role("button", name="Transcribe").click()
    page.wait_for_selector("#file-transcript span")
    assert page.get_attribute("#file-transcript", "data-text") == http_text
    words = page.locator("#file-transcript span")
    assert " ".join(words.all_text_contents()) == http_text
    second = float(words.nth(1).get_attribute("data-start") or 0)
    page.eval_on_selector("#player", f"player => {{ player.currentTime = {second + 0.01}; }}")
    current = page.wait_for_selector("#file-transcript span.current")
    assert current.text_content() == words.nth(1).text_content()
    assert current.get_attribute("aria-current") == "true"
    page.screenshot(path=str(shots / "console-file.png"))
    page.close()


def test_the_operator_view_uploads_pins_deletes_and_shows_metrics(browser, server, http_text, shots):
    page = open_console(browser, server)
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("tab", name="Operator").click()
    page.locator('#adapters tr[data-id="chorus/fr"]').wait_for()

    page.fill("#upload-name", "my-fr")
    page.select_option("#upload-visibility", "private")
    page.set_input_files("#upload-file", str(DEMO_DIR / "adapters" / "fr.safetensors"))
    page.get_by_role("button", name="Upload").click()
    row = page.locator('#adapters tr[data-id="anonymous/my-fr"]')
    row.wait_for()
    assert row.locator("td").nth(2).text_content() == "private"
    assert page.locator('#adapter option[value="anonymous/my-fr"]').count() == 1  # the picker offers it now
    page.get_by_role("button", name="Upload").click()  # the same file again: version 2
    page.wait_for_selector('#adapters tr[data-id="anonymous/my-fr"] td:nth-child(2):text-is("2")')
    row.get_by_role("button", name="Versions").click()
    page.wait_for_selector("#versions:has-text('anonymous/my-fr: versions 1, 2')")

    row.get_by_role("button", name="Pin").click()
    row.get_by_role("button", name="Unpin").wait_for()
    assert row.locator("td").nth(3).text_content() == "yes"  # pinning makes it resident
    page.wait_for_selector('#metrics dd[data-metric="Requests"]')
    page.screenshot(path=str(shots / "console-operator.png"), full_page=True)
    row.get_by_role("button", name="Unpin").click()
    row.get_by_role("button", name="Pin").wait_for()
    row.get_by_role("button", name="Delete").click()
    row.wait_for(state="detached")
    assert page.locator('#adapters tr[data-id="chorus/fr"]').count() == 1
    requests = page.locator('#metrics dd[data-metric="Requests"]').text_content()
    assert requests is not None and int(requests) >= 1  # http_text transcribed a file


def test_keyboard_and_phone_width(browser, server, shots):
    page = open_console(browser, server, width=390, height=844)
    page.focus("#tab-live")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-file", "aria-selected") == "true"
    assert page.evaluate("document.activeElement.id") == "tab-file"
    assert page.is_visible("#file-form") and not page.is_visible("#mic")
    page.keyboard.press("End")
    assert page.get_attribute("#tab-operator", "aria-selected") == "true"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    page.screenshot(path=str(shots / "console-phone.png"), full_page=True)
    page.close()


def nav_top(page) -> float:
    return float(page.evaluate("document.querySelector('nav').getBoundingClientRect().top + window.scrollY"))


def test_a_refusal_is_red_and_does_not_move_the_tabs(browser, server):
    page = open_console(browser, server, width=390, height=844)
    page.get_by_role("tab", name="Operator").click()
    page.locator('#adapters tr[data-id="chorus/fr"]').wait_for()
    top = nav_top(page)
    page.fill("#upload-name", "not-an-adapter")
    page.set_input_files(
        "#upload-file", files=[{"name": "x.safetensors", "mimeType": "application/octet-stream", "buffer": b"hello"}]
    )
    page.get_by_role("button", name="Upload").click()  # the server refuses the file with a long message
    status = page.wait_for_selector("#status.error")
    assert len(status.text_content() or "") > 40  # long enough to wrap at phone width
    assert status.evaluate("element => getComputedStyle(element).color") == ERROR_RED
    assert float(status.evaluate("element => parseFloat(getComputedStyle(element).fontSize)")) >= 15
    assert nav_top(page) == top  # the message grows below the tabs, not inside the header
    page.close()


def test_stop_settles_the_last_line_and_says_so(browser, server):
    page = open_console(browser, server)
    page.get_by_role("button", name="Start microphone").click()
    page.wait_for_selector("#live-transcript p.partial:not(:empty)", timeout=60_000)  # a turn is open
    page.get_by_role("button", name="Stop microphone").click()
    assert page.get_attribute("#mic", "aria-pressed") == "false"
    page.wait_for_selector("#status:text-is('stopped')", timeout=15_000)
    assert page.locator("#live-transcript p.partial").count() == 0  # the grey line settled
    assert (page.locator("#live-transcript p.final").first.text_content() or "").strip()
    page.close()


def test_a_refused_live_connection_gives_the_button_back(browser, server):
    page = open_console(browser, server)
    # The server's refusal of a bad key after the handshake (routes/realtime.py: close 1008 with the reason).
    page.route_web_socket("**/v1/realtime**", lambda socket: socket.close(code=1008, reason="invalid API key"))
    page.get_by_role("button", name="Start microphone").click()
    status = page.wait_for_selector("#status.error:has-text('disconnected (1008: invalid API key)')", timeout=30_000)
    assert status.evaluate("element => getComputedStyle(element).color") == ERROR_RED
    page.get_by_role("button", name="Start microphone").wait_for()
    assert page.get_attribute("#mic", "aria-pressed") == "false"
    page.close()


def test_the_picker_starts_on_the_default_adapter_offers_auto_and_groups_own_and_public(browser, server):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server.url + "/")
    page.wait_for_selector(f'#adapter option[value="{DEFAULT_ADAPTER}"]', state="attached")
    assert page.input_value("#adapter") == DEFAULT_ADAPTER  # not whatever sorts first (chorus/de)
    assert page.locator('#adapter > option[value="auto"]').count() == 1
    assert page.locator('#adapter optgroup[label="Public"] option[value="chorus/fr"]').count() == 1
    assert page.locator("#adapter option[value='chorus/lid']").count() == 0  # classifiers do not transcribe
    uploaded = httpx.put(
        f"{server.url}/v1/adapters/picker-own?visibility=private",
        content=(DEMO_DIR / "adapters" / "it.safetensors").read_bytes(),
        timeout=60,
    )
    assert uploaded.status_code == 201, uploaded.text
    try:
        page.reload()
        own = '#adapter optgroup[label="Yours"] option[value="anonymous/picker-own"]'
        page.wait_for_selector(own, state="attached")
        assert page.input_value("#adapter") == DEFAULT_ADAPTER  # a private upload sorting first is not the default
    finally:
        httpx.delete(f"{server.url}/v1/adapters/picker-own", timeout=60)
        page.close()


def test_the_operator_view_offers_only_the_actions_the_caller_may_take(browser, server):
    page = open_console(browser, server, width=390, height=844)
    page.get_by_role("tab", name="Operator").click()
    seeded = page.locator('#adapters tr[data-id="chorus/fr"]')
    seeded.wait_for()
    assert seeded.get_by_role("button", name="Versions").count() == 1
    assert seeded.get_by_role("button", name="Pin").count() == 0  # chorus/* is not the anonymous tenant's
    assert seeded.get_by_role("button", name="Delete").count() == 0
    # Phone width: every row's actions are on screen, not in a sideways scroller.
    box = seeded.get_by_role("button", name="Versions").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390
    assert page.evaluate("(w => w.scrollWidth <= w.clientWidth)(document.querySelector('.table-wrap'))")
    page.close()
