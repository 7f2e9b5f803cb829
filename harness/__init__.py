"""Test tooling that never ships in the wheel: SIGKILL crash-and-resume trials and local multi-process launches."""
