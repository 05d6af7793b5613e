"""Chorus Python SDK: `Chorus` (sync) and `AsyncChorus` clients for the Chorus speech-recognition server.

```python
from chorus_client import Chorus

with Chorus("http://127.0.0.1:8000", api_key="...") as chorus:
    print(chorus.transcribe("hello.wav", adapter="fr").text)
```

Importing the SDK never imports torch or the server.
"""

from chorus_client._core import FileResult, RetryPolicy
from chorus_client.async_client import AsyncChorus
from chorus_client.client import Chorus
from chorus_client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ChorusError,
    ConflictError,
    DeadlineExceededError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    parse_error,
)
from chorus_client.models import (
    Adapter,
    AdapterPage,
    Classification,
    Deleted,
    Health,
    LabelScore,
    Model,
    ModelList,
    Segment,
    Transcription,
    VerboseTranscription,
    Word,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "Adapter",
    "AdapterPage",
    "AsyncChorus",
    "AuthenticationError",
    "Chorus",
    "ChorusError",
    "Classification",
    "ConflictError",
    "DeadlineExceededError",
    "Deleted",
    "FileResult",
    "Health",
    "InternalServerError",
    "InvalidRequestError",
    "LabelScore",
    "Model",
    "ModelList",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "Segment",
    "Transcription",
    "VerboseTranscription",
    "Word",
    "parse_error",
]
