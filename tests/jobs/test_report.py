"""`codecsep report` in a real headless browser (Debian's chromium, `make install-browser`),
driven over the DevTools protocol on a pipe: the page loads with no console errors, and the
screenshot has ink where each chart is."""

import base64
import io
import json
import os
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from PIL import Image

from jobs import report
from storage import shards
from storage.exported import prompt_slugs

PROMPTS = ("dog barking", "rain")


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, browser: str):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire():  # the browser reads fd 3 and writes fd 4 (dup first: the pipes may sit on 3 or 4)
            read, write = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf, self._next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed the DevTools pipe")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


@pytest.fixture
def browser():
    path = shutil.which("chromium")
    assert path, "chromium is not installed: run `make install-browser` (Debian's chromium package)"
    tools = DevTools(path)
    yield tools
    tools.close()


def separated_scores(root, n_clips: int = 12) -> str:
    """Separated shards' score columns (a scores-only run), two prompts, and one exported clip."""
    rng = np.random.default_rng(0)
    rows = []
    for prompt in PROMPTS:
        for i in range(n_clips):
            duration = rng.uniform(2, 10)
            spans = sorted(rng.uniform(0, duration, 2).tolist())
            rows.append(
                {
                    "id": f"clip{i:02d}",
                    "prompt": prompt,
                    "energy_kept": float(rng.uniform(0, 0.9)),
                    "mask_mean": float(rng.uniform(0.1, 0.7)),
                    "active_fraction": (spans[1] - spans[0]) / duration,
                    "active_spans": [spans],
                    "n_samples": int(duration * 16000),
                    "sample_rate": 16000,
                    "codec": "dac_16khz",
                }
            )
    with shards.ShardWriter(str(root), "w", shards.ShardOptions(max_rows=10)) as w:
        w.write(pa.Table.from_pylist(rows))
    best = max((r for r in rows if r["prompt"] == "rain"), key=lambda r: r["energy_kept"])
    wav = root / best["id"] / f"{prompt_slugs(set(PROMPTS))['rain']}.wav"
    wav.parent.mkdir(parents=True)
    sf.write(str(wav), 0.1 * np.sin(np.arange(8000) / 10), 16000)
    return str(root)


def test_report_page_renders_its_charts_without_errors(tmp_path, browser):
    src = separated_scores(tmp_path / "separated")
    out = tmp_path / "report.html"
    result = report.run(report.parse_args(["--input", src, "--output", str(out)]))
    assert result.extra["clips"] == 12 and result.extra["prompts"] == list(PROMPTS)
    page = out.read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained

    for domain in ("Page", "Runtime", "Log"):
        browser.call(f"{domain}.enable", session=True)
    browser.call(
        "Emulation.setDeviceMetricsOverride", session=True, width=1300, height=900, deviceScaleFactor=1, mobile=False
    )
    browser.call("Page.navigate", session=True, url=out.as_uri())
    browser.wait_for("Page.loadEventFired")
    found = json.loads(
        browser.call(
            "Runtime.evaluate",
            session=True,
            returnByValue=True,
            expression="""
        JSON.stringify({
          charts: [...document.querySelectorAll('svg.chart')].map(e => {
            const r = e.getBoundingClientRect(); return [r.x + scrollX, r.y + scrollY, r.width, r.height]; }),
          timelines: document.querySelectorAll('svg.timeline').length,
          audio: [...document.querySelectorAll('audio')].map(a => a.src.slice(0, 14)),
          height: document.documentElement.scrollHeight})""",
        )["result"]["value"]
    )
    errors = [
        e
        for e in browser.events
        if e.get("method") in ("Runtime.exceptionThrown",)
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
    ]
    assert errors == []
    assert len(found["charts"]) == 3 * len(PROMPTS)  # energy kept, mask mean, active fraction per prompt
    assert found["timelines"] == 2 * 2 * 5  # top and bottom 5 per prompt
    assert found["audio"] == ["data:audio/wav"]

    shot = browser.call(
        "Page.captureScreenshot",
        session=True,
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": 1300, "height": found["height"], "scale": 1},
    )
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
    pixels = np.asarray(image).astype(int)
    for x, y, w, h in found["charts"]:
        region = pixels[int(y) : int(y + h), int(x) : int(x + w)]
        assert region.size, (x, y, w, h)
        inked = (np.abs(region - 255).sum(-1) > 60).mean()
        colored = (region.max(-1) - region.min(-1) > 60).mean()  # bars are coloured, text and axes grey
        assert inked > 0.02 and colored > 0.01, ((x, y, w, h), inked, colored)


def test_report_on_the_residual_stem_plays_the_residual_audio(tmp_path):
    """With `--residual`, export writes `<slug>.wav` (target) and `<slug>.residual.wav`
    beside it; a report of the residual rows embeds the residual file, never the target's."""
    row = {"id": "clip", "prompt": "rain", "energy_kept": 0.5, "mask_mean": 0.5, "n_samples": 16000}
    rows = [{**row, "stem": stem, "sample_rate": 16000} for stem in ("target", "residual")]
    shards.write_table_atomic(str(tmp_path / "sep" / "part.parquet"), pa.Table.from_pylist(rows))
    audio = {}
    for stem, name in (("target", "rain.wav"), ("residual", "rain.residual.wav")):
        buffer = io.BytesIO()
        sf.write(buffer, np.full(800, 0.1 if stem == "target" else -0.2), 16000, format="WAV")
        audio[stem] = buffer.getvalue()
        (tmp_path / "wav" / "clip").mkdir(parents=True, exist_ok=True)
        (tmp_path / "wav" / "clip" / name).write_bytes(audio[stem])
    for stem in ("target", "residual"):
        out = tmp_path / f"{stem}.html"
        args = ["--input", str(tmp_path / "sep"), "--output", str(out), "--audio", str(tmp_path / "wav")]
        report.run(report.parse_args([*args, f"stem={stem}"]))
        (player,) = [s for s in out.read_text().split('src="')[1:] if s.startswith("data:audio")]
        assert base64.b64decode(player.split(",", 1)[1].split('"', 1)[0]) == audio[stem], stem
