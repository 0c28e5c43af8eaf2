"""Business services (the brief's ``app/services``): what the jobs and the web app call."""
