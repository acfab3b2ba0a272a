"""The messenger's web application."""

import zoneinfo

# Time zones come from the tzdata package (a dependency) only, never from the host's zone
# files: every node knows the same zones with the same rules, slim images included, so a
# zone one node accepts (available_timezones) another can load. Before any zone is loaded.
zoneinfo.reset_tzpath(to=[])
