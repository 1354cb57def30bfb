"""The Gradio page of the web demo: components and events only; every decision is ``webdemo.core``'s.

A request runs in the queue (one at a time: a second user waits, with the queue position shown), its progress shown
while it works (the model's steps, then the renderer's frame bar through tqdm); when the page has received the
results (Gradio copies them into its own cache), a follow-up event removes the request's folder.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from webdemo.core import SIZES, DemoApp, DemoError, Limits, list_models
from webdemo.examples import example_rows, make_examples

log = logging.getLogger("webdemo")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_EXAMPLES_DIR = "outputs/demo/examples"
INTRO = """# GestureLSM: co-speech gestures from your speech
Upload or record speech (wav, flac, ogg or mp3), optionally with its transcript or a TextGrid, and get full-body
SMPL-X motion: a video with your sound, the motion as a BEAT2 npz, BVH and glTF (.glb) exports, and the json of every
setting. Limits of this server: {mb:g} MB per upload, {sec:g} s of audio."""


def upload_folder() -> Path:
    """Where Gradio stores uploads (the only place, with the examples, that a request's paths may point into)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def _error_outputs(message: str) -> tuple[Any, ...]:
    return None, None, None, None, None, None, None, f"**Error:** {message}", None


def handle_request(app: DemoApp, audio: Any, transcript: Any, textgrid: Any, model: Any, steps: Any,
                   guidance: Any, seed: Any, body: Any, size: Any, reference: Any,
                   progress: Any = None) -> tuple[Any, ...]:  # fmt: skip
    """The Generate button: (video, npz, bvh, glb, json file, settings, real-time factor, status, request id).
    Bad input is a message in the status box; an unexpected failure is logged with its traceback on the server
    and named in one line on the page (never a traceback there)."""

    def report(fraction: float, desc: str) -> None:
        if progress is not None:
            progress(fraction, desc=desc)

    try:
        out = app.generate(audio, transcript=transcript, textgrid=textgrid, model=model, steps=steps,
                           guidance=guidance, seed=seed, body=body, size=size, reference=reference,
                           progress=report)  # fmt: skip
    except DemoError as e:
        return _error_outputs(str(e))
    except Exception as e:  # a bug, not the user's input: the traceback goes to the server log only
        log.exception("request failed")
        return _error_outputs(f"internal error ({type(e).__name__}); the server log has the details")
    status = out.summary + "".join(f"  \nNote: {n}" for n in out.notes)
    return (str(out.video), str(out.npz), str(out.bvh), str(out.glb), str(out.json), out.settings,
            round(out.real_time_factor, 4), status, out.request_id)  # fmt: skip


def build_ui(app: DemoApp, examples: list[list[str | None]] | None = None) -> Any:
    """The page (a ``gr.Blocks``), queue enabled."""
    import gradio as gr

    lim = app.limits
    with gr.Blocks(title="GestureLSM demo", analytics_enabled=False,
                   delete_cache=(600, int(lim.keep_minutes * 60))) as demo:  # fmt: skip
        gr.Markdown(INTRO.format(mb=lim.max_upload_mb, sec=lim.max_seconds))
        notice = app.notice()
        if notice:
            gr.Markdown(f"**Note:** {notice}", elem_id="model-notice")
        request_id = gr.State(None)
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(label="speech", sources=["upload", "microphone"], type="filepath", format=None,
                                 elem_id="audio-in")  # fmt: skip
                transcript = gr.Textbox(label="transcript (optional)", lines=2, max_length=lim.max_transcript_chars,
                                        placeholder="the spoken words; aligned to the audio by its energy")  # fmt: skip
                textgrid = gr.File(label="or a TextGrid with a 'words' tier (optional)",
                                   file_types=[".TextGrid", ".textgrid"], type="filepath",
                                   elem_id="textgrid-in")  # fmt: skip
                model = gr.Dropdown(app.model_labels, value=app.model_labels[0], label="model")
                with gr.Row():
                    # text boxes, not numbers: empty must mean "the checkpoint's own setting"
                    steps = gr.Textbox(label=f"steps (1-{lim.max_steps})", placeholder="the model's own")
                    guidance = gr.Textbox(label=f"guidance (0-{lim.max_guidance:g})", placeholder="the model's own")
                    seed = gr.Number(0, label="seed", precision=0, minimum=0)
                with gr.Row():
                    body = gr.Radio(app.bodies(), value="mannequin", label="body")
                    size = gr.Dropdown(list(SIZES), value=SIZES[0], label="video size (one panel)")
                reference = gr.File(label="reference motion, side by side (optional .npz)", file_types=[".npz"],
                                    type="filepath", elem_id="reference-in")  # fmt: skip
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                status = gr.Markdown("Upload or record speech, then press Generate.", elem_id="status")
                video = gr.Video(label="video", interactive=False, format=None, elem_id="result-video")
                rtf = gr.Number(label="real-time factor (generation seconds / audio seconds)", interactive=False,
                                elem_id="rtf")  # fmt: skip
                with gr.Row():
                    npz = gr.File(label="motion (BEAT2 npz)", interactive=False, elem_id="result-npz")
                    settings_file = gr.File(label="settings (json)", interactive=False, elem_id="result-json")
                with gr.Row():
                    bvh = gr.File(label="BVH", interactive=False, elem_id="result-bvh")
                    glb = gr.File(label="glTF (.glb)", interactive=False, elem_id="result-glb")
                settings = gr.JSON(label="settings")
        if examples:
            gr.Examples(examples, inputs=[audio, transcript, textgrid, reference], cache_examples=False,
                        label="Examples from the synthetic corpus (TextGrid + side by side with its ground truth; "
                              "transcript; text-free)")  # fmt: skip

        # Gradio hands each call its own tracker in place of this default; track_tqdm shows the renderer's frame bar
        tracker = gr.Progress(track_tqdm=True)

        def on_run(audio, transcript, textgrid, model, steps, guidance, seed, body, size, reference,
                   progress=tracker):  # fmt: skip
            return handle_request(app, audio, transcript, textgrid, model, steps, guidance, seed, body, size,
                                  reference, progress)  # fmt: skip

        run.click(on_run, inputs=[audio, transcript, textgrid, model, steps, guidance, seed, body, size, reference],
                  outputs=[video, npz, bvh, glb, settings_file, settings, rtf, status, request_id],
                  concurrency_limit=1, api_name="generate").then(
            lambda rid: app.release(rid) and None, inputs=[request_id], outputs=None,
            api_visibility="private")  # fmt: skip
    demo.queue(max_size=lim.queue_size, default_concurrency_limit=1)
    return demo


def serve(
    ckpt: str | None = None,
    config: str | None = None,
    generator: str = "shortcut",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    limits: Limits | None = None,
    device: str = "auto",
    workdir: str | None = None,
    examples_dir: str = DEFAULT_EXAMPLES_DIR,
    smplx_model: str | None = None,
    block: bool = True,
    precision: str = "fp32",
) -> Any:
    """Build the app and the page and start the server (``demo.py``)."""
    from utils.paths import resolve_path

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing is sent anywhere
    if "GRADIO_TEMP_DIR" not in os.environ:
        # Gradio's default upload/cache folder (/tmp/gradio) is shared by every Gradio app on the machine: give this
        # server its own, so a request's paths can only point at this server's uploads (removed at exit)
        private = tempfile.mkdtemp(prefix="gesturelsm-gradio-")
        os.environ["GRADIO_TEMP_DIR"] = private
        atexit.register(shutil.rmtree, private, True)
    import gradio as gr

    limits = limits or Limits()
    ex_dir = resolve_path(examples_dir)
    examples = make_examples(ex_dir)
    app = DemoApp(list_models(ckpt, config, generator), [upload_folder(), ex_dir], limits, workdir, device,
                  smplx_model, precision)  # fmt: skip
    atexit.register(app.close)
    # a plain `kill` (SIGTERM) ends the server like Ctrl+C does, so the request folders are removed (atexit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo = build_ui(app, example_rows(examples))
    if host not in LOCAL_HOSTS:
        print(f"warning: listening on {host}: anyone who can reach this machine can use the demo", file=sys.stderr)
    if share:
        print("warning: --share makes a public link through Gradio's relay (needs the internet)", file=sys.stderr)
    # system fonts: the page asks no font server for anything (and works offline)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # fmt: skip
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=limits.max_upload_bytes,
                allowed_paths=[str(app.folders.root), str(ex_dir)], theme=theme, ssr_mode=False,
                prevent_thread_lock=not block, show_error=False, quiet=False)  # fmt: skip
    return demo


__all__ = ["DEFAULT_EXAMPLES_DIR", "build_ui", "handle_request", "serve", "upload_folder"]
