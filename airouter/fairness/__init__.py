"""Fair admission when a backend's nodes are full: waiting requests are granted by priority,
then by weighted fair share across keys (scheduler), whichever store counts the slots."""
