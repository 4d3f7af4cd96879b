"""Where jobs come from: the inbox folder, the microphone (listener, spool), fleet jobs."""
