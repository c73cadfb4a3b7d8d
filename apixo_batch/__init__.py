"""apixo-batch: turn a job file of video generations into MP4 files through APIXO."""

from .catalog import MODELS, ModelSpec, get_model, validate_input
from .client import DEFAULT_BASE_URL, ApixoClient, TaskStatus, parse_task_payload
from .clock import Clock, FakeClock, SystemClock
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .secret import ApiKey, load_api_key

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE_URL",
    "MODELS",
    "ApiKey",
    "ApixoClient",
    "Clock",
    "FakeClock",
    "ModelSpec",
    "SystemClock",
    "TaskStatus",
    "__version__",
    "get_model",
    "load_api_key",
    "parse_task_payload",
    "validate_input",
    *_errors_all,
]
