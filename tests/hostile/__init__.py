"""The hostile sweep: a loopback router that misbehaves in every way routewatch must survive."""
