-- The retention job keeps each job's latest success: this finds it without reading all of the job's runs.
CREATE INDEX job_run_last_success ON job_run (job, finished_at) WHERE outcome = 'succeeded';
