"""Flower ServerApp: resolve the experiment from the run config and run it."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RESUME_KEY, ExperimentConfig, load_from_run_config, resolve_path
from common.errors import ConfideError, RunFailed
from server import flower_internals, flower_runtime
from server.prompt_grid import PromptGrid
from server.run import run_experiment

APP_DIR = Path(__file__).resolve().parents[1]


def create_server_app(fixed: ExperimentConfig | None = None, resume: Path | None = None) -> ServerApp:
    """The ServerApp; ``fixed`` bypasses the run config (in-process simulations, tests), and
    ``resume`` its ``resume`` key (a stopped run's folder to continue)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        flower_runtime.setup_logging()
        flower_runtime.install_exit_handler()  # `flwr stop`, kill: FAILED.txt says so (common/stopping.py)
        try:
            exp = fixed or load_from_run_config(context.run_config, APP_DIR)
            folder = str(context.run_config.get(RESUME_KEY, "") or "") if fixed is None else ""
            resume_from = resume or (resolve_path(folder) if folder else None)
            grid = PromptGrid(grid) if flower_internals.polls_slowly(grid) else grid
            run_experiment(grid, exp, run_id=str(context.run_id), resume=resume_from)
        except ConfideError as exc:
            # One clear line; re-raised as an Exception so that Flower marks the run failed
            # (SystemExit escapes its server thread and the run would read "completed").
            print(f"[confide] error: {exc}", flush=True)
            raise RunFailed(str(exc)) from None

    return server_app


app = create_server_app()
