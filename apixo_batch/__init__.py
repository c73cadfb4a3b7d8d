"""apixo-batch: turn a job file of video generations into MP4 files through APIXO.

The public names are re-exported here and imported lazily, so that ``plan``
(which needs no network) does not pay for importing aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "MODELS": "catalog.models",
    "ModelSpec": "catalog.models",
    "get_model": "catalog.models",
    "validate_input": "catalog.models",
    "DEFAULT_BASE_URL": "apixo.client",
    "ApixoClient": "apixo.client",
    "TaskStatus": "apixo.client",
    "parse_task_payload": "apixo.client",
    "Clock": "clock",
    "FakeClock": "clock",
    "SystemClock": "clock",
    "Downloaded": "outputs.download",
    "download_file": "outputs.download",
    "Engine": "pipeline",
    "ExitCode": "exitcodes",
    "RunOptions": "pipeline",
    "RunResult": "pipeline",
    "Supervisor": "pipeline",
    "Event": "events",
    "Campaign": "jobs",
    "Job": "jobs",
    "load_campaign": "jobs",
    "make_plan": "planning.plan",
    "S3Location": "location",
    "ApiKey": "apixo.secret",
    "KeySpec": "apixo.secret",
    "load_api_key": "cli.environment",
    "run_campaign": "api",
    "stream_campaign": "api",
    "ApixoError": "errors",
    "ApiError": "errors",
    "AuthError": "errors",
    "DownloadError": "errors",
    "FieldIssue": "errors",
    "Forbidden": "errors",
    "InsufficientBalance": "errors",
    "IntegrityError": "errors",
    "InvalidRequest": "errors",
    "JobFileError": "errors",
    "JournalError": "errors",
    "MissingApiKey": "errors",
    "NotFound": "errors",
    "RateLimited": "errors",
    "ResultExpired": "errors",
    "ServerError": "errors",
    "TransportError": "errors",
}

__all__ = [
    "DEFAULT_BASE_URL",
    "MODELS",
    "ApiError",
    "ApiKey",
    "ApixoClient",
    "ApixoError",
    "AuthError",
    "Campaign",
    "Clock",
    "DownloadError",
    "Downloaded",
    "Engine",
    "Event",
    "ExitCode",
    "FakeClock",
    "FieldIssue",
    "Forbidden",
    "InsufficientBalance",
    "IntegrityError",
    "InvalidRequest",
    "Job",
    "JobFileError",
    "JournalError",
    "KeySpec",
    "MissingApiKey",
    "ModelSpec",
    "NotFound",
    "RateLimited",
    "ResultExpired",
    "RunOptions",
    "RunResult",
    "S3Location",
    "ServerError",
    "Supervisor",
    "SystemClock",
    "TaskStatus",
    "TransportError",
    "__version__",
    "download_file",
    "get_model",
    "load_api_key",
    "load_campaign",
    "make_plan",
    "parse_task_payload",
    "run_campaign",
    "stream_campaign",
    "validate_input",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'apixo_batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .api import run_campaign, stream_campaign
    from .apixo.client import DEFAULT_BASE_URL, ApixoClient, TaskStatus, parse_task_payload
    from .apixo.secret import ApiKey, KeySpec
    from .catalog.models import MODELS, ModelSpec, get_model, validate_input
    from .cli.environment import load_api_key
    from .clock import Clock, FakeClock, SystemClock
    from .errors import (
        ApiError,
        ApixoError,
        AuthError,
        DownloadError,
        FieldIssue,
        Forbidden,
        InsufficientBalance,
        IntegrityError,
        InvalidRequest,
        JobFileError,
        JournalError,
        MissingApiKey,
        NotFound,
        RateLimited,
        ResultExpired,
        ServerError,
        TransportError,
    )
    from .events import Event
    from .exitcodes import ExitCode
    from .jobs import Campaign, Job, load_campaign
    from .location import S3Location
    from .outputs.download import Downloaded, download_file
    from .pipeline import Engine, RunOptions, RunResult, Supervisor
    from .planning.plan import make_plan
