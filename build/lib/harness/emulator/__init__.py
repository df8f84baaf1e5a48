"""ESP-DL's integer arithmetic on the host, the runner's scheduler and the virtual board built on them."""
