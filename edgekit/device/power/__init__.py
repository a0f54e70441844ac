"""Power and energy on the device: sources (sysfs readers, a command reader, an estimate), the
sampler/meter that turns them into joules per window, the power log and CO2. No torch.
"""
