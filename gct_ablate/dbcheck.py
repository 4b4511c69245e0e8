"""A database tracking store (PostgreSQL, MySQL): reached once, with a timeout, before
any training; MLflow itself retries a store it cannot reach for minutes."""

from __future__ import annotations

from gct_ablate.errors import UsageError
from gct_ablate.locks import driver_url
from gct_ablate.masking import check_url, mask


def first_call(uri: str) -> None:
    """Connect once (5 s timeout; MLflow itself retries for minutes), then one MLflow call."""
    from mlflow import MlflowClient
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    check_url(uri)
    timeout = {"connect_timeout": 5} if uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = create_engine(driver_url(uri), poolclass=NullPool, connect_args=timeout)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        MlflowClient(tracking_uri=driver_url(uri)).search_experiments(max_results=1)
    except Exception as err:  # driver and MLflow errors differ per backend
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UsageError(f"cannot open MLflow tracking store {mask(uri)}: {first}") from None
