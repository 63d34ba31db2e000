"""Live camera preview while recording or deploying: a browser page (`web`) or the rerun viewer.

The control loop only hands each tick to `publish()`, which keeps a reference to the newest
observation and returns at once: encoding and sending happen on other threads, at the
preview's own rate, so a preview never makes a tick late.

- `web`: an MJPEG page served over HTTP (`http://127.0.0.1:8765/` by default). It works
  headless and over SSH (`ssh -L 8765:localhost:8765 robot-pc`, then open the address on your
  laptop); JPEG encoding runs only while a browser is looking. Endpoints: `/` (every camera and
  the latest state and action), `/stream/<camera>` (multipart MJPEG), `/frame/<camera>.jpg`
  (one snapshot), `/state.json`.
- `rerun`: logs camera frames, state and action to rerun (the `rerun` extra:
  `pip install 'robolearn[rerun]'`): spawns the native viewer where there is a display, or
  serves it for `rerun --connect` elsewhere, or saves an `.rrd` file to open later.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import unquote

import numpy as np

from robolearn.errors import RobolearnError
from robolearn.hal import Observation
from robolearn.spec import FeatureSpec

log = logging.getLogger(__name__)

KINDS = ("none", "web", "rerun")


class PreviewError(RobolearnError):
    """A preview that cannot start: a port in use, rerun not installed, a bad setting."""


@dataclass
class PreviewConfig:
    """How to show the cameras live. `kind`: none | web | rerun."""

    kind: str = "none"
    fps: float = 10.0  # frames per second sent to the viewer (the loop's rate is unaffected)
    host: str = "127.0.0.1"  # web: the address to listen on (0.0.0.0 to reach it from the LAN)
    port: int = 8765  # web: 0 picks a free port
    jpeg_quality: int = 80  # web
    rerun: str = (
        "spawn"  # rerun: spawn (a viewer window) | serve (for rerun --connect) | a .rrd path
    )

    def check(self) -> None:
        if self.kind not in KINDS:
            raise PreviewError(f"preview={self.kind!r}: choose one of {', '.join(KINDS)}")
        if not (self.fps > 0 and np.isfinite(self.fps)):
            raise PreviewError(f"preview_fps must be a positive number, got {self.fps}")
        if not 0 <= int(self.port) <= 65535:
            raise PreviewError(f"preview_port must be 0..65535, got {self.port}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise PreviewError(f"jpeg quality must be 1..100, got {self.jpeg_quality}")


class Preview(Protocol):
    """What the recorder and the deployment runtime call: cheap `publish`, then `close`."""

    def publish(self, observation: Observation, action: dict[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


def make_preview(config: PreviewConfig, spec: FeatureSpec) -> Preview | None:
    """The preview `config` asks for, started; None for `none`."""
    config.check()
    if config.kind == "web":
        return WebPreview(config, spec)
    if config.kind == "rerun":
        return RerunPreview(config, spec)
    return None


class _Latest:
    """The newest observation and action, with a sequence number; readers wait for a newer one."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self.seq = 0
        self.observation: Observation | None = None
        self.action: dict[str, np.ndarray] = {}
        self.closed = False

    def put(self, observation: Observation, action: dict[str, np.ndarray]) -> None:
        with self._cv:
            self.observation, self.action = observation, action
            self.seq += 1
            self._cv.notify_all()

    def wait_newer(self, seq: int, timeout: float) -> tuple[int, Observation | None, dict]:
        with self._cv:
            self._cv.wait_for(lambda: self.seq > seq or self.closed, timeout=timeout)
            return self.seq, self.observation, self.action

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()


def _lowdim(values: dict[str, np.ndarray], spec: FeatureSpec) -> dict[str, list[float]]:
    out = {}
    for key, value in values.items():
        if key in spec and spec[key].kind != "image" and np.asarray(value).size <= 64:
            out[key] = [round(float(v), 5) for v in np.asarray(value).reshape(-1)]
    return out


# ---------------------------------------------------------------------- web (MJPEG over HTTP)
class WebPreview:
    """Serves the cameras as MJPEG streams and a small page, on a background HTTP server."""

    def __init__(self, config: PreviewConfig, spec: FeatureSpec) -> None:
        import cv2  # noqa: F401 - fail here, not in the server thread

        self.config = config
        self.spec = spec
        self.cameras = list(spec.keys_of("image"))
        self.latest = _Latest()
        self.frames_sent = 0
        handler = type("Handler", (_Handler,), {"preview": self})
        try:
            self.server = ThreadingHTTPServer((config.host, int(config.port)), handler)
        except OSError as e:
            raise PreviewError(
                f"the web preview cannot listen on {config.host}:{config.port} ({e.strerror}); "
                "choose another port with preview_port=N (0 picks a free one)"
            ) from e
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.name = "robolearn-preview"
        self._thread.start()
        log.info("camera preview at %s", self.url)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def publish(self, observation: Observation, action: dict[str, np.ndarray]) -> None:
        self.latest.put(observation, action)

    def jpeg(self, camera: str, observation: Observation) -> bytes:
        import cv2

        rgb = np.asarray(observation[camera])
        bgr = rgb[..., ::-1] if rgb.shape[-1] == 3 else rgb
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:  # pragma: no cover - imencode fails only on invalid arrays
            raise PreviewError(f"could not encode a frame of {camera!r}")
        return buf.tobytes()

    def page(self) -> str:
        imgs = "".join(
            f'<figure><img src="/stream/{html.escape(c)}"><figcaption>{html.escape(c)}'
            "</figcaption></figure>"
            for c in self.cameras
        )
        return (
            "<!doctype html><meta charset=utf-8><title>robolearn preview</title>"
            "<style>body{font:14px sans-serif;background:#111;color:#ddd}figure{display:inline-block}"
            "img{image-rendering:pixelated;min-width:320px;border:1px solid #444}"
            "pre{white-space:pre-wrap}</style>"
            f"<h3>robolearn · live cameras</h3>{imgs or '<p>this robot has no camera</p>'}"
            '<pre id=s></pre><script>setInterval(async()=>{try{const r=await fetch("/state.json");'
            'document.getElementById("s").textContent=JSON.stringify(await r.json(),null,1)}'
            "catch(e){}},500)</script>"
        )

    def close(self) -> None:
        self.latest.close()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    preview: WebPreview
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("preview: " + format, *args)

    def _send(self, body: bytes, content_type: str, status: int = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        p = self.preview
        path = unquote(self.path.split("?", 1)[0])
        if path in ("/", "/index.html"):
            return self._send(p.page().encode(), "text/html; charset=utf-8")
        if path == "/state.json":
            _, obs, action = p.latest.wait_newer(-1, 0)
            body = {} if obs is None else {**_lowdim(obs.values, p.spec), **_lowdim(action, p.spec)}
            return self._send(json.dumps(body).encode(), "application/json")
        for prefix, suffix in (("/frame/", ".jpg"), ("/stream/", "")):
            if path.startswith(prefix) and path.endswith(suffix):
                camera = path[len(prefix) : len(path) - len(suffix)]
                if camera not in p.cameras:
                    msg = f"no camera {camera!r}; cameras: {', '.join(p.cameras) or 'none'}"
                    return self._send(msg.encode(), "text/plain", HTTPStatus.NOT_FOUND)
                return self._frame(camera) if prefix == "/frame/" else self._stream(camera)
        self._send(b"not found", "text/plain", HTTPStatus.NOT_FOUND)

    def _frame(self, camera: str) -> None:
        p = self.preview
        _, obs, _ = p.latest.wait_newer(0, timeout=5.0)  # the first frame, if none yet
        if obs is None:
            return self._send(b"no frame yet", "text/plain", HTTPStatus.SERVICE_UNAVAILABLE)
        self._send(p.jpeg(camera, obs), "image/jpeg")

    def _stream(self, camera: str) -> None:
        p = self.preview
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        period = 1.0 / p.config.fps
        seq = 0
        try:
            while not p.latest.closed:
                t0 = time.monotonic()
                seq, obs, _ = p.latest.wait_newer(seq, timeout=1.0)
                if obs is None or p.latest.closed:
                    continue
                data = p.jpeg(camera, obs)
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\n"
                    + f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                    + b"\r\n"
                )
                p.frames_sent += 1
                time.sleep(max(0.0, period - (time.monotonic() - t0)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away


# ---------------------------------------------------------------------- rerun
class RerunPreview:
    """Logs cameras, state and action to rerun at `fps`, from a background thread."""

    def __init__(self, config: PreviewConfig, spec: FeatureSpec) -> None:
        try:
            import rerun as rr
        except ImportError as e:
            raise PreviewError(
                "preview=rerun needs the rerun SDK: pip install 'robolearn[rerun]' "
                "(or use preview=web, which needs nothing more)"
            ) from e
        self.rr = rr
        self.config = config
        self.spec = spec
        self.stream = rr.RecordingStream("robolearn")
        target = config.rerun
        if target == "spawn":
            self.stream.spawn()
        elif target == "serve":
            self.url = self.stream.serve_grpc()
            log.info("rerun preview: rerun --connect %s", self.url)
        else:
            self.stream.save(target)
        self.latest = _Latest()
        self.frames_logged = 0
        self._thread = threading.Thread(target=self._run, name="robolearn-rerun", daemon=True)
        self._thread.start()

    def publish(self, observation: Observation, action: dict[str, np.ndarray]) -> None:
        self.latest.put(observation, action)

    def _run(self) -> None:
        rr, stream = self.rr, self.stream
        period = 1.0 / self.config.fps
        seq = 0
        while not self.latest.closed:
            t0 = time.monotonic()
            seq, obs, action = self.latest.wait_newer(seq, timeout=0.5)
            if obs is None or self.latest.closed:
                continue
            self._log(rr, stream, obs, action)
            time.sleep(max(0.0, period - (time.monotonic() - t0)))

    def _log(self, rr: Any, stream: Any, obs: Observation, action: dict) -> None:
        stream.set_time("capture", timestamp=obs.timestamp)
        for key, value in obs.values.items():
            kind = self.spec[key].kind if key in self.spec else None
            if kind == "image":
                stream.log(f"cameras/{key}", rr.Image(np.asarray(value)))
            elif kind == "state":
                self._scalars(rr, stream, f"state/{key}", key, value)
        for key, value in action.items():
            self._scalars(rr, stream, f"action/{key}", key, value)
        self.frames_logged += 1

    def _scalars(self, rr: Any, stream: Any, path: str, key: str, value: np.ndarray) -> None:
        flat = np.asarray(value, dtype=np.float64).reshape(-1)
        if flat.size > 64:
            return  # depth maps and other large arrays are not curves
        names = self.spec[key].dim_names() if key in self.spec else None
        for i, v in enumerate(flat):
            name = names[i] if names else str(i)
            stream.log(f"{path}/{name}", rr.Scalars(float(v)))

    def close(self) -> None:
        self.latest.close()
        self._thread.join(timeout=5)
        self.stream.flush()
        if self.config.rerun not in ("spawn", "serve"):
            self.stream.disconnect()
