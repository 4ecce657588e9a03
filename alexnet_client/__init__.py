"""A Python client for alexnet-serving; it needs httpx (and Pillow only to send PIL images), never torch.

from alexnet_client import Client
with Client("http://127.0.0.1:8000") as client:
    print(client.predict("cat.jpg").label)
"""

from alexnet_client.async_client import AsyncClient
from alexnet_client.client import Client
from alexnet_client.errors import AlexNetError, ApiError, ConnectionFailed
from alexnet_client.protocol import RetryPolicy
from alexnet_client.results import ModelInfo, Prediction, Result

__all__ = [
    "AlexNetError",
    "ApiError",
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "ModelInfo",
    "Prediction",
    "Result",
    "RetryPolicy",
]
