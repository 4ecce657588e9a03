"""Read the image bytes out of a request: multipart ``file`` fields or a raw image body."""

from __future__ import annotations

import io

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from app.errors import ApiError

# Content types for a raw body. image/* beyond these (svg, heic, avif, ...) is refused.
RAW_IMAGE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/png",
        "image/webp",
        "image/bmp",
        "image/x-bmp",
        "image/x-ms-bmp",
        "image/gif",
        "image/tiff",
        "image/tif",
    }
)


async def read_images(request: Request, *, max_files: int) -> list[bytes]:
    """Return the uploaded images' bytes in order, or raise ``ApiError`` (400/415)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request, max_files)
    if content_type.startswith("image/"):
        if content_type not in RAW_IMAGE_TYPES:
            raise ApiError(
                415, "unsupported_media_type", f"{content_type} is not accepted; send JPEG, PNG, WebP, BMP, GIF or TIFF"
            )
        body = await _read_body(request)
        if not body:
            raise ApiError(400, "no_image", "the request body is empty")
        return [body]
    if not content_type:
        raise ApiError(400, "no_image", "no image: send multipart/form-data with a 'file' field, or an image/* body")
    raise ApiError(
        415, "unsupported_media_type", f"{content_type} is not accepted; send multipart/form-data or an image/* body"
    )


async def _read_body(request: Request) -> bytes:
    """The raw body, held once: ``request.body()`` keeps its chunks until it has joined them, two
    copies of each upload at its peak. ``BytesIO.getvalue()`` hands over its own buffer, uncopied."""
    buffer = io.BytesIO()
    async for chunk in request.stream():
        buffer.write(chunk)
    return buffer.getvalue()


async def _read_multipart(request: Request, max_files: int) -> list[bytes]:
    try:
        form = await request.form(max_files=max_files, max_fields=100)
    except StarletteHTTPException as exc:  # starlette reports malformed multipart this way
        raise ApiError(400, "malformed_multipart", str(exc.detail)) from exc
    try:
        files = [value for value in form.getlist("file") if isinstance(value, UploadFile)]
        if not files:
            raise ApiError(400, "no_image", "no image: the multipart body has no 'file' field with a file in it")
        images = [await upload.read() for upload in files]
    finally:
        await form.close()
    if not all(images):
        raise ApiError(400, "no_image", "an uploaded file is empty")
    return images
