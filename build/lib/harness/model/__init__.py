"""What is tested: model specs (torch or exported files) and the frames streamed through them."""
