"""The `beacon` command line (click). Commands are thin shims over one library call each."""
