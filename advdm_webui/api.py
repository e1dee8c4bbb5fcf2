"""POST /advdm/v1/protect: images (base64) or a folder inside the configured input folder
-> protected PNGs (base64) + measurements. POST /advdm/v1/mimicry: the mimicry check on the
loaded checkpoint -> its figures (the command line's --json) + the picture grid (base64 PNG).
POST /advdm/v1/img2img: the img2img (SDEdit) check of original / protected pairs -> a row of
figures per strength + the side-by-side picture (base64 PNG) for each pair.
Registered only with --api (like /sdapi) and guarded by --api-auth exactly as
modules/api/api.py does it. Only imported inside the web UI."""
from __future__ import annotations

import base64
import binascii
import math
import secrets
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

from fastapi import Depends, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field

import advdm
from advdm import images as advdm_images
from advdm.attack.pgd import SURROGATE_FIELDS
from advdm.settings import IMG2IMG, MEASURE, MIMICRY, MIMICS, PRESETS, PROTECT, check

from modules import shared  # noqa: E402

ROUTE = "/advdm/v1/protect"
MIMICRY_ROUTE = "/advdm/v1/mimicry"
IMG2IMG_ROUTE = "/advdm/v1/img2img"


def _knob(name: str, knobs=PROTECT, **kw):
    """A request field with the core's default, bounds and help (advdm.settings)."""
    k = knobs[name]
    bounds = {} if k.low is None else {"ge": k.low, "le": k.high}
    return Field(k.default, description=k.help, **bounds, **kw)


def _choices(name: str):
    return Literal[tuple(PROTECT[name].choices)]


IMAGES = "base64 image files (a data: URL prefix is allowed)"


class ProtectRequest(BaseModel):
    images: List[str] = Field(default_factory=list, description=IMAGES)
    names: List[str] = Field(default_factory=list, description="optional file names, one per image; the outputs "
                             "are <name>_protected.png")
    input_folder: Optional[str] = Field(None, description="folder mode: a subfolder of the configured input folder")
    output_folder: Optional[str] = Field(None, description="save into this subfolder of the configured output folder")
    return_images: bool = True
    preset: _choices("preset") = Field(PROTECT["preset"].default, description=(
        PROTECT["preset"].help + "; " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items())))
    method: _choices("method") = _knob("method")
    epsilon: float = _knob("epsilon")
    budget: _choices("budget") = _knob("budget")
    step_size: float = _knob("step_size")
    steps: int = _knob("steps")
    samples: int = _knob("samples")
    t_min: float = _knob("t_min")
    t_max: float = _knob("t_max")
    seed: int = _knob("seed")
    view: _choices("view") = _knob("view")
    eot_jpeg: int = _knob("eot_jpeg")
    surrogate: Optional[bool] = Field(None, description="attack through a LoRA surrogate that keeps fine-tuning on "
                                      "the image (default: on for anti-dreambooth and mist-v2 only)")
    surrogate_every: int = _knob("surrogate_every")
    surrogate_steps: int = _knob("surrogate_steps")
    surrogate_rank: int = _knob("surrogate_rank")
    surrogate_lr: float = _knob("surrogate_lr")
    prompt: str = _knob("prompt")
    measure: bool = True
    measure_samples: int = _knob("samples", MEASURE)
    measure_max_samples: int = _knob("max_samples", MEASURE)

    class Config:  # a misspelt field is an error, not silently the default
        extra = "forbid"


class MimicryRequest(BaseModel):
    train: List[str] = Field(default_factory=list, description="the artist's clean training images: " + IMAGES)
    protected: List[str] = Field(default_factory=list, description="their protected copies, in the order of train")
    held_out: List[str] = Field(default_factory=list, description=(
        "clean images of the same style NOT in train (what the mimic should learn); without them each training "
        "image is cut in two: the left halves train, the right halves are held out"))
    seeds: int = _knob("seeds", MIMICRY)
    seed: int = _knob("seed", MIMICRY)
    steps: int = _knob("steps", MIMICRY)
    rank: int = _knob("rank", MIMICRY)
    lr: float = _knob("lr", MIMICRY)
    batch: int = _knob("batch", MIMICRY)
    convs: bool = _knob("convs", MIMICRY)
    resolution: Optional[int] = _knob("resolution", MIMICRY)
    draws: int = _knob("draws", MIMICRY)
    view: Literal[tuple(MIMICRY["view"].choices)] = _knob("view", MIMICRY)
    pictures: int = _knob("pictures", MIMICRY)
    picture_steps: int = _knob("picture_steps", MIMICRY)
    picture_size: Optional[int] = _knob("picture_size", MIMICRY)
    prompt: str = _knob("prompt")
    mimic: Literal[tuple(MIMICS["mimic"].choices)] = _knob("mimic", MIMICS)
    ti_prompt: str = _knob("ti_prompt", MIMICS)
    ti_word: str = _knob("ti_word", MIMICS)
    ti_init: str = _knob("ti_init", MIMICS)
    ti_lr: float = _knob("ti_lr", MIMICS)

    class Config:
        extra = "forbid"


class Img2ImgRequest(BaseModel):
    original: List[str] = Field(default_factory=list, description="the clean images: " + IMAGES)
    protected: List[str] = Field(default_factory=list, description="their protected copies, in the order of original")
    strengths: List[float] = Field(list(IMG2IMG["strengths"].default), description=(
        f"{IMG2IMG['strengths'].help}; each {IMG2IMG['strengths'].low:g} to {IMG2IMG['strengths'].high:g}"))
    seeds: int = _knob("seeds", IMG2IMG)
    steps: int = _knob("steps", IMG2IMG)
    seed: int = _knob("seed", IMG2IMG)
    view: Literal[tuple(IMG2IMG["view"].choices)] = _knob("view", IMG2IMG)
    resolution: Optional[int] = _knob("resolution", IMG2IMG)
    prompt: str = _knob("prompt")

    class Config:
        extra = "forbid"


class ProtectedImage(BaseModel):
    name: str
    image: Optional[str] = None
    path: Optional[str] = None
    measurement: Optional[Dict[str, Any]] = None  # measure()'s figures: floats, the draws used, `protects`, `verdict`
    summary: Optional[str] = None


class ProtectResponse(BaseModel):
    images: List[ProtectedImage]
    config: dict
    interrupted: bool = False


def make_config(req: ProtectRequest) -> advdm.ProtectConfig:
    """The preset's values, then every field the request gives."""
    given = req.model_fields_set if hasattr(req, "model_fields_set") else req.__fields_set__
    kwargs = dict(PRESETS[req.preset])
    for k in ("method", "epsilon", "budget", "step_size", "steps", "samples", "t_min", "t_max", "seed", "view",
              *SURROGATE_FIELDS):
        if k in given or k not in kwargs:
            kwargs[k] = getattr(req, k)
    return advdm.ProtectConfig(eot_jpeg=req.eot_jpeg or None, **kwargs)


def config_dict(config: advdm.ProtectConfig, prompt: str) -> dict:
    """The settings used, as the PNG metadata records them, plus whether the surrogate ran
    (as_dict leaves the surrogate's fields out when it is off)."""
    return {**config.as_dict(), "surrogate": bool(config.surrogate), "prompt": prompt}


def _field_errors(errors: List[dict]) -> str:
    """'preset: unexpected value; permitted: ...' for each bad field."""
    parts = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


class BadFieldIs400(APIRoute):
    """A request that does not fit the schema is a 400 naming the field (FastAPI's default is 422)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request):
            try:
                return await handler(request)
            except RequestValidationError as e:
                raise HTTPException(status_code=400, detail=_field_errors(e.errors())) from None

        return route


def _auth_dependency():
    if not getattr(shared.cmd_opts, "api_auth", None):
        return []
    credentials = {}
    for item in shared.cmd_opts.api_auth.split(","):
        user, password = item.split(":")
        credentials[user] = password

    def auth(c: HTTPBasicCredentials = Depends(HTTPBasic())):
        if c.username in credentials and secrets.compare_digest(c.password, credentials[c.username]):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return [Depends(auth)]


def _subfolder(root: Path, sub: Optional[str], what: str) -> Path:
    from advdm_webui.webui import inside

    root = root.resolve()
    p = (root / (sub or "")).resolve()
    if Path(sub or "").is_absolute() or not inside(p, root):
        raise HTTPException(status_code=400, detail=f"{what} must be a subfolder of the configured folder")
    return p


def _decode(data: str, name: str):
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise HTTPException(status_code=400, detail=f"{name}: not valid base64") from None
    try:
        return advdm_images.load_image_bytes(raw, name)
    except advdm_images.ImageError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None


def protect_endpoint(req: ProtectRequest) -> ProtectResponse:
    from modules.call_queue import queue_lock

    from advdm_webui import webui

    try:
        config = make_config(req)
    except (ValueError, TypeError) as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    if req.measure_samples > req.measure_max_samples:
        raise HTTPException(status_code=400, detail="measure_samples must not exceed measure_max_samples")
    if bool(req.images) == bool(req.input_folder):
        raise HTTPException(status_code=400, detail="give either images or input_folder")

    if req.input_folder is not None:
        folder = _subfolder(webui.default_input_dir(), req.input_folder, "input_folder")
        if not folder.is_dir():
            raise HTTPException(status_code=404, detail="input_folder does not exist")
        root = webui.default_input_dir()
        files = [p for p in webui.image_files(folder) if webui.inside(p, root)]
        loaded, names = [], []
        for p in files:
            try:
                loaded.append(advdm_images.load_image(p))
                names.append(p.stem)
            except advdm_images.ImageError as e:
                raise HTTPException(status_code=400, detail=f"{p.name}: {str(e).split(': ', 1)[-1]}") from None
    else:
        names = [Path(n).stem for n in req.names] + [f"image{i:03d}" for i in range(len(req.names), len(req.images))]
        loaded = [_decode(d, n) for d, n in zip(req.images, names)]

    out_dir = None
    if req.output_folder is not None or req.input_folder is not None:
        out_dir = _subfolder(webui.default_output_dir(), req.output_folder, "output_folder")
        out_dir.mkdir(parents=True, exist_ok=True)

    items: List[ProtectedImage] = []
    metadata = None

    def on_result(i, im, r):
        entry = ProtectedImage(name=names[i])
        if out_dir is not None:
            path = _free_name(out_dir, names[i])
            im.save(path, r["protected"], metadata=metadata)
            entry.path = str(path)
        if req.return_images:
            png = advdm_images.png_bytes(r["protected"], im.alpha, im.levels, metadata, im.icc_profile)
            entry.image = base64.b64encode(png).decode("ascii")
        if r["measurement"] is not None:
            entry.measurement = {k: v if isinstance(v, (bool, int, str)) else float(v) for k, v in r["measurement"].items()}
            entry.summary = advdm.format_measurement(r["measurement"])
        items.append(entry)

    interrupted = False
    with queue_lock:
        shared.state.begin(job="advdm_protect")
        try:
            metadata = webui.png_metadata(config, req.prompt)
            webui.protect_images(loaded, config, prompt=req.prompt, measure=req.measure,
                                 measure_samples=req.measure_samples, measure_max_samples=req.measure_max_samples,
                                 on_result=on_result)
        except webui.Interrupted:
            interrupted = True
        except webui.UnsupportedModel as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        finally:
            shared.state.end()
    return ProtectResponse(images=items, config=config_dict(config, req.prompt), interrupted=interrupted)


def decode_set(req: BaseModel, field: str) -> List[Any]:
    """The images of a list field, each named field[i] in a refusal."""
    return [_decode(d, f"{field}[{i}]") for i, d in enumerate(getattr(req, field))]


def paired_images(req: BaseModel, first: str, second: str) -> tuple:
    """Two lists of images paired by order, same count and sizes; a 400 naming the field otherwise."""
    if not getattr(req, first):
        raise HTTPException(status_code=400, detail=f"{first}: give at least one image")
    a, b = decode_set(req, first), decode_set(req, second)
    if len(a) != len(b):
        raise HTTPException(status_code=400, detail=f"{second}: {len(b)} images for {len(a)} in {first}: give one "
                            f"per image of {first}, in the same order")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.size != y.size:
            raise HTTPException(status_code=400, detail=f"{second}[{i}]: size {y.size[0]}x{y.size[1]} differs from "
                                f"{first}[{i}] ({x.size[0]}x{x.size[1]})")
    return a, b


def json_safe(value: Any) -> Any:
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def png_base64(rgb) -> str:
    return base64.b64encode(advdm_images.png_bytes(rgb)).decode("ascii")


def run_check(job: str, check) -> Optional[dict]:
    """check() under the queue lock as job `job` (the web UI's progress and Interrupt); None when
    interrupted. A setting the model cannot run with is a 400, an unsupported model a 409."""
    from modules.call_queue import queue_lock

    from advdm_webui import webui

    with queue_lock:
        shared.state.begin(job=job)
        try:
            return check()
        except webui.Interrupted:
            return None
        except webui.UnsupportedModel as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        finally:
            shared.state.end()


def mimicry_endpoint(req: MimicryRequest) -> dict:
    """The command line's `mimicry --json` figures, `summary` (its text report), `grid` (the
    pictures, base64 PNG, or null with pictures 0) and `interrupted`."""
    from advdm.evaluation.mimicry import config_from_options, format_mimicry

    from advdm_webui import webui

    try:
        config = config_from_options({name: getattr(req, name) for name in (*MIMICRY, *MIMICS)})
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    train, protected = paired_images(req, "train", "protected")
    held = decode_set(req, "held_out")
    result = run_check("advdm_mimicry", lambda: webui.mimicry(
        [x.rgb for x in train], [x.rgb for x in protected], [x.rgb for x in held], config, prompt=req.prompt))
    if result is None:
        return {"interrupted": True}
    grid = result.pop("grid")
    result["summary"] = format_mimicry(result)
    result["grid"] = None if grid is None else png_base64(grid)
    result["interrupted"] = False
    return json_safe(result)


def img2img_endpoint(req: Img2ImgRequest) -> dict:
    """`pairs`: for each (original, protected) pair its rows (`img2img`, one per strength), `summary`
    (the text report), `scored`, and `picture` (base64 PNG); `interrupted` (then `pairs` holds the
    pairs finished before)."""
    from advdm.evaluation.img2img import format_img2img

    from advdm_webui import webui

    options = {name: getattr(req, name) for name in IMG2IMG}
    options["strengths"] = tuple(options["strengths"])
    try:
        check(IMG2IMG, options)
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    originals, protected = paired_images(req, "original", "protected")
    pairs = []

    def on_result(i, r):
        picture = r.pop("picture")
        pairs.append({**r, "summary": format_img2img(r), "picture": png_base64(picture)})

    done = run_check("advdm_img2img", lambda: webui.img2img([x.rgb for x in originals], [x.rgb for x in protected],
                                                            options, prompt=req.prompt, on_result=on_result))
    return json_safe({"pairs": pairs, "interrupted": done is None})


def _free_name(folder: Path, stem: str) -> Path:
    p = folder / f"{stem}_protected.png"
    n = 1
    while p.exists():
        p = folder / f"{stem}_protected-{n}.png"
        n += 1
    return p


def register(app: FastAPI) -> None:
    if not (getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False)):
        return
    app.router.add_api_route(ROUTE, protect_endpoint, methods=["POST"], response_model=ProtectResponse,
                             dependencies=_auth_dependency(), route_class_override=BadFieldIs400)
    app.router.add_api_route(MIMICRY_ROUTE, mimicry_endpoint, methods=["POST"], response_model=None,
                             dependencies=_auth_dependency(), route_class_override=BadFieldIs400)
    app.router.add_api_route(IMG2IMG_ROUTE, img2img_endpoint, methods=["POST"], response_model=None,
                             dependencies=_auth_dependency(), route_class_override=BadFieldIs400)
