"""The ``lorarec`` command line: verbs, command construction, cluster recipes. Ranks never
import this package."""
