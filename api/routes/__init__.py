"""One router per resource: images, jobs, health."""
