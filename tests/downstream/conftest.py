import pytest

from tests.downstream.slots_ci import BackgroundRun

SLOTS_CI_RUN = pytest.StashKey[BackgroundRun]()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: start the run only if a selected test needs it
def pytest_collection_modifyitems(config, items):
    if config.option.collectonly:
        return
    if any("ci_run" in getattr(item, "fixturenames", ()) for item in items):
        run = config.stash[SLOTS_CI_RUN] = BackgroundRun.shared_or_private()
        run.claim_and_start()


def pytest_unconfigure(config):
    run = config.stash.get(SLOTS_CI_RUN, None)
    if run is not None and not run.shared:  # a shared run is the xdist controller's to stop
        run.stop()


@pytest.fixture(scope="session")
def slots_ci_run(request) -> BackgroundRun:
    run = request.config.stash.get(SLOTS_CI_RUN, None)
    if run is None:  # requested in a way collection did not show: start it now
        run = request.config.stash[SLOTS_CI_RUN] = BackgroundRun.shared_or_private()
        run.claim_and_start()
    return run
