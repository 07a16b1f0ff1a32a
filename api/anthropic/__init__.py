"""The Anthropic Messages API as one more translator over the job's typed event stream: the message
object (:mod:`.messages`), its SSE events (:mod:`.streaming`) and its error envelope (:mod:`.errors`)."""
