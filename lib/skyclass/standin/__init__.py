"""A local stand-in for SkyServer (SqlSearch and ImgCutout) for tests and offline runs."""
