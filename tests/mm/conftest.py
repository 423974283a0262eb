import pytest


@pytest.fixture(autouse=True)
def _close_mmengine_loggers():
    """mmengine's loggers outlive a run and keep writing to the streams they were created with; pytest closes a
    test's captured streams when the test ends. Drop their handlers after each test, as a new process would."""
    yield
    from mmengine.logging import MMLogger

    for logger in MMLogger._instance_dict.values():
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
