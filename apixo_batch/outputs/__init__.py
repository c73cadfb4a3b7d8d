"""Where results land: the fetch of a result URL, local ``.part`` files, and object storage."""
