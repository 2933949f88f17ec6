"""Where a run's files live: any filesystem (`fs`), written so that a crash never leaves a partial one (`atomic`)."""
