const axios = require('axios');

const API_URL = 'http://localhost:8095/api/v1';
const API_KEY = 'demo-api-key-2024';

async function createCacheJob(files = [], directories = []) {
  try {
    const response = await axios.post(
      `${API_URL}/cache/jobs`,
      { files, directories },
      {
        headers: {
          'X-API-Key': API_KEY,
          'Content-Type': 'application/json'
        }
      }
    );
    
    console.log(`Job created: ${response.data.jobId}`);
    console.log(`Total size: ${response.data.totalSize.readable}`);
    return response.data;
  } catch (error) {
    console.error('Error creating job:', error.response?.data || error.message);
  }
}

async function monitorJob(jobId) {
  try {
    const response = await axios.get(
      `${API_URL}/cache/jobs/${jobId}`,
      {
        headers: { 'X-API-Key': API_KEY }
      }
    );
    
    const job = response.data.job;
    const progress = job.progress;
    
    console.log(`Files: ${progress.files.completed}/${progress.files.total}`);
    console.log(`Size: ${progress.size.completedReadable}/${progress.size.totalReadable}`);
    
    if (job.throughput) {
      console.log(`Speed: ${job.throughput.readable}`);
    }
    
    return job;
  } catch (error) {
    console.error('Error getting job status:', error.response?.data || error.message);
  }
}
