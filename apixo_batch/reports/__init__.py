"""What people read after a run: the manifest, the summary and the review page. Reports
read journal rows; they never hold the journal itself."""
