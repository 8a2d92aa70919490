-- How many of a probe's output tokens the model spent reasoning (usage's
-- completion_tokens_details.reasoning_tokens, or the reasoning deltas the
-- prober counted; NULL: no sign of reasoning). The prober uses it to know a
-- reasoning model, which gets a larger output budget; a probe whose budget ran
-- out while reasoning is stored with error_class 'budget_exhausted'.
ALTER TABLE probe_results ADD COLUMN reasoning_tokens integer;
