"""Train on feedback's link (app/feedback/dataset.train_url): the dataset, the base model and
adapter most rows rated, the advisor's weights, and an MLX adapter's backend, so the form
opens on MLX KTO where a torch form would refuse the adapter."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from sqlalchemy import create_engine
from sqlmodel import Session, SQLModel

from app.feedback.dataset import train_url
from app.models import DatasetEntry, Feedback, Job


def rows(job_id: int | None, adapter: str, n: int = 2) -> list[Feedback]:
    return [Feedback(model="tiny-demo", variant="v", adapter=adapter, job_id=job_id,
                     label=bool(i % 2)) for i in range(n)]


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}


def test_the_link_carries_the_adapter_and_its_backend(tmp_path):
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    entry = DatasetEntry(id="fb", path="/x.jsonl",
                         stats={"desirable_weight": 1.2, "undesirable_weight": 1.0})
    mlx_folder = tmp_path / "mlx-adapter"
    mlx_folder.mkdir()
    (mlx_folder / "adapters.safetensors").write_bytes(b"")
    with Session(engine) as session:
        for id_, backend in ((1, "torch"), (2, "mlx")):
            session.add(Job(id=id_, backend=backend, method="kto", model="tiny-demo",
                            dataset="d"))
        session.commit()
        torch_run = query(train_url(entry, rows(1, "/a"), session))
        assert torch_run == {"dataset": "fb", "model": "tiny-demo", "init_adapter": "1",
                             "desirable_weight": "1.2", "undesirable_weight": "1.0"}
        assert query(train_url(entry, rows(2, "/b"), session))["backend"] == "mlx"
        by_folder = query(train_url(entry, rows(None, str(mlx_folder)), session))
        assert by_folder["init_adapter"] == str(mlx_folder) and by_folder["backend"] == "mlx"
        assert "backend" not in query(train_url(entry, rows(None, str(tmp_path)), session))
        assert query(train_url(entry, [], session)) == {
            "dataset": "fb", "desirable_weight": "1.2", "undesirable_weight": "1.0"}
