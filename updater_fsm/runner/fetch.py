"""Executors that bring the package onto the device: download, verify, discard."""

from __future__ import annotations

import asyncio

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.compatibility import refuse_incompatible
from updater_fsm.core.errors import ErrorCode, Failure, UpdaterError
from updater_fsm.core.progress import Transfer
from updater_fsm.ops import download, fleet_access, verify
from updater_fsm.runner.context import ExecutorContext


async def start_download(ctx: ExecutorContext, effect: fx.StartDownload) -> None:
    config = ctx.config
    settings = download.DownloadSettings(
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        max_attempts=config.download_attempts,
    )

    def on_progress(p: download.DownloadProgress) -> None:
        ctx.engine.update_transfer(
            Transfer(effect.job_id, p.bytes_done, p.total, p.speed_bps, p.eta_s, p.retry)
        )

    async def on_checkpoint(point: ev.ResumePoint) -> None:
        await ctx.engine.submit(ev.DownloadCheckpoint(effect.job_id, point))

    try:
        result = await download.download_package(
            effect.request,
            config.downloads_dir,
            resume=effect.resume if effect.resume.offset > 0 else None,
            settings=settings,
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
            access=fleet_access.access_for(config, effect.request.package_url),
        )
    except UpdaterError as err:
        ctx.engine.post(ev.DownloadFailed(effect.job_id, err.failure))
        return
    ctx.engine.post(ev.DownloadDone(effect.job_id, result.size, result.md5, result.sha256))


async def verify_package(ctx: ExecutorContext, effect: fx.VerifyPackage) -> None:
    """The package is what the request promised (size, digests, signature), and what it
    holds can be installed here: its manifest names the requested version, destinations
    under the root (or the extra roots) and this device's model. All of it is known now:
    refused before "ready to install", never later at the install."""
    request = effect.request
    path = ctx.package_path(request.package_name)
    try:
        if effect.md5 is None or effect.sha256 is None:
            digests = await verify.hash_file(path)
        else:
            digests = verify.Digests(effect.md5, effect.sha256, path.stat().st_size)
        await asyncio.to_thread(
            verify.verify_digests,
            path,
            digests,
            size=request.package_size,
            md5=request.package_md5,
            sha256=request.package_sha256,
            signature_b64=request.package_signature,
            trusted_keys=ctx.trusted_keys,
        )
        manifest = await asyncio.to_thread(ctx.read_manifest, request.version, request.package_name)
        refusal = refuse_incompatible(
            manifest.compatible, ctx.config.compatible, ctx.config.allow_incompatible
        )
        if refusal is not None:
            raise UpdaterError(refusal.code, refusal.detail)
    except UpdaterError as err:
        ctx.engine.post(ev.VerifyFailed(effect.job_id, err.failure))
        return
    except FileNotFoundError:
        ctx.engine.post(
            ev.VerifyFailed(
                effect.job_id, Failure(ErrorCode.INCOMPLETE_DOWNLOAD, f"{path} vanished")
            )
        )
        return
    ctx.engine.post(ev.Verified(effect.job_id))


async def discard_package(ctx: ExecutorContext, effect: fx.DiscardPackage) -> None:
    await asyncio.to_thread(
        download.discard_download, ctx.config.downloads_dir, effect.package_name
    )
